/**
 * The `dmu` subcommands. Each lives in its own file and exports
 * `register(program)`; add one line here for a new one.
 */
import type { Command } from 'commander';
import { register as attach } from './attach.js';
import { register as backend } from './backend.js';
import { register as check } from './check.js';
import { register as convert } from './convert.js';
import { register as create } from './create.js';
import { register as doctor } from './doctor.js';
import { register as info } from './info.js';

export const commands: ReadonlyArray<(program: Command) => void> = [doctor, create, info, check, convert, attach, backend];
