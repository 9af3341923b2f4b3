#!/usr/bin/env node
/** `dmu-detach NAME|PATH`: the same as `dmu detach`. */
process.argv.splice(2, 0, 'detach');
await import('./dmu.js');
