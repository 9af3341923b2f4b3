#!/usr/bin/env node
/** `dmu-attach SPEC [-n NAME]`: the same as `dmu attach`. */
process.argv.splice(2, 0, 'attach');
await import('./dmu.js');
