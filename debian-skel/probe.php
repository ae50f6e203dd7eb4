<?php
// The release probe of {{package}} {{version}}, written by `moodle-release build`.
//
// `moodle-release roll` asks it on each web node, before the node goes back into rotation,
// which release the node's PHP runs: the answer is compiled into this file, so a PHP whose
// opcode cache still holds the previous release (no reload after the install, or
// opcache.validate_timestamps=0) answers for that release, and the node is kept out.
// It loads no Moodle code (no database, no session) and tells nothing but the package's name,
// version and source commit, which the package's own control file already holds.
header('Content-Type: application/json');
header('Cache-Control: no-store');
echo '{"package":"{{package}}","version":"{{version}}","commit":"{{commit}}"}', "\n";
