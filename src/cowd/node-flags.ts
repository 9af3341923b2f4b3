/**
 * How cowd's Node runs: every launcher of ours (dmu attach, the Xen
 * backend, cowd's own #! line) starts it with these flags.
 *
 * --jitless: V8 interprets cowd's code and never compiles it to machine
 * code. cowd does a little work per kernel message, in bursts that come
 * exactly when a guest starts writing somewhere new, and the JIT spent its
 * CPU compiling (and recompiling) in those bursts, on background threads
 * that compete with the disk. Measured under QEMU's TCG (bench/firsttouch,
 * random first writes at depth 32, 10 pairs): cowd used 1.68 s of CPU
 * with the JIT, 0.73 s with --max-opt=1, 0.53 s jitless. On this host
 * without emulation, a replay of the same messages runs at about 160,000
 * first-write reports a second on one core jitless (570,000 with the JIT),
 * far above any disk's rate of first writes. It also means no writable
 * and executable memory in a daemon that runs as root.
 *
 * --no-expose-wasm: a jitless V8 has no WebAssembly (cowd uses none);
 * saying so keeps V8 from warning about it on stderr, which is cowd's log.
 */
export const COWD_NODE_FLAGS: readonly string[] = ['--jitless', '--no-expose-wasm'];

/** Does this process run without V8's compilers (from the command line or NODE_OPTIONS)? */
export function runsJitless(): boolean {
	const options = (process.env.NODE_OPTIONS ?? '').split(/\s+/);
	return process.execArgv.includes('--jitless') || options.includes('--jitless');
}
