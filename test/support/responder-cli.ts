#!/usr/bin/env node
/**
 * Command-line wrapper of the test responder, for guest bash scripts:
 *
 *   node dist/test/support/responder-cli.js --device /dev/dmu/KEY \
 *       --rules rules.json --log out.jsonl --ready /tmp/ready &
 *
 * Rules format: see test/support/responder-rules.ts. Stops on SIGTERM or
 * SIGINT (closing the device; unanswered requests go back to the kernel's
 * queue), or by itself when the target is destroyed. Exit 0 on a clean
 * stop, the DmuError exit code (one line on stderr) on a bad rules file or
 * an unusable device.
 */
import fs from 'node:fs';
import { Command } from 'commander';
import { runMain } from '../../src/cli/run.js';
import { DmuError } from '../../src/errors.js';
import { Responder } from './responder.js';
import { parseRules } from './responder-rules.js';

const program = new Command('responder')
	.description('scripted dm-userspace daemon for kernel tests: answers MAP and COMMIT requests by rules')
	.requiredOption('--device <path>', 'control device, /dev/dmu/<key>')
	.option('--rules <file>', 'JSON rules (see test/support/responder-rules.ts); default: identity for every block')
	.option('--log <file>', 'append every received and sent message as a JSON line')
	.option('--ready <file>', 'create this file once the device is open and serving')
	.showHelpAfterError()
	.exitOverride();

function readRules(path: string | undefined) {
	if (!path) return parseRules({});
	let text: string;
	try {
		text = fs.readFileSync(path, 'utf8');
	} catch (e) {
		throw new DmuError('DMU_ERR_RESPONDER_RULES', `cannot read rules file ${path}: ${(e as NodeJS.ErrnoException).code}`);
	}
	let json: unknown;
	try {
		json = JSON.parse(text);
	} catch (e) {
		throw new DmuError('DMU_ERR_RESPONDER_RULES', `rules file ${path} is not JSON: ${(e as Error).message}`);
	}
	return parseRules(json);
}

runMain('responder', async () => {
	program.parse(process.argv);
	const opts = program.opts<{ device: string; rules?: string; log?: string; ready?: string }>();
	const rules = readRules(opts.rules);
	const responder = await Responder.start({ device: opts.device, rules, logPath: opts.log });
	const stop = () => {
		// A blocked read may still hold a threadpool thread: exit explicitly.
		responder.stop().finally(() => process.exit(0));
	};
	process.on('SIGTERM', stop);
	process.on('SIGINT', stop);
	if (opts.ready) fs.writeFileSync(opts.ready, `${process.pid}\n`);
	await responder.done;
	await responder.stop();
});
