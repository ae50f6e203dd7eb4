# Reloads the PHP that serves the site, as a package's postinst does and as `moodle-release roll`
# does after switching a node to another release (sh functions, included in both).
#
# PHP keeps compiled code in each php-fpm's opcode cache: reload php-fpm so that the new code
# is served at once. Where php-fpm is not installed or not running (a chroot, a cron node, a
# build host) there is nothing to reload, and that is not an error.
reload_php_fpm() {
    # invoke-rc.d works under systemd and sysvinit alike and honours policy-rc.d (chroots, image
    # builds): only a php-fpm that runs is reloaded.
    command -v invoke-rc.d >/dev/null 2>&1 || return 0
    for script in /etc/init.d/php*-fpm; do
        [ -e "$script" ] || continue
        name=${script##*/}
        invoke-rc.d --quiet "$name" status >/dev/null 2>&1 || continue
        invoke-rc.d --quiet "$name" reload || echo "${DPKG_MAINTSCRIPT_PACKAGE:-moodle-release}: could not reload $name: reload it by hand" >&2
    done
}

# With Apache's mod_php the opcode cache lives in Apache's own processes: a graceful reload lets
# the requests in flight finish (a node is out of rotation while roll upgrades it anyway).
reload_apache_mod_php() {
    command -v invoke-rc.d >/dev/null 2>&1 || return 0
    [ -e /etc/init.d/apache2 ] || return 0
    ls /etc/apache2/mods-enabled/php*.load >/dev/null 2>&1 || return 0
    invoke-rc.d --quiet apache2 status >/dev/null 2>&1 || return 0
    invoke-rc.d --quiet apache2 reload || echo "${DPKG_MAINTSCRIPT_PACKAGE:-moodle-release}: could not reload apache2: reload it by hand" >&2
}
