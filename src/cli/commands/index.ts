/**
 * The `dmu` subcommands. Each lives in its own file and exports
 * `register(program)`; add one line here for a new one.
 */
import type { Command } from 'commander';
import { register as doctor } from './doctor.js';

export const commands: ReadonlyArray<(program: Command) => void> = [doctor];
