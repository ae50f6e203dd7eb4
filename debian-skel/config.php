<?php
// Shipped by the {{package}} package (moodle-release). The site's own settings ($CFG->wwwroot,
// the database, secrets) live on each node in {{config_php}}, outside the package. That file
// sets up $CFG as a normal config.php does; if it ends with require_once of lib/setup.php it
// must name this dirroot: require_once('{{setup_php}}');
require('{{config_php}}');
require_once('{{setup_php}}');
