/**
 * Bundles each command-line entry point into one file under dist/bin/
 * (esbuild). Why: Node resolves and reads every module of an unbundled
 * program at start-up, a few hundred files for `dmu` (commander, execa,
 * pino and the plugins). On real hardware that costs 0.2 s; in a Xen dom0
 * under emulation, or over a network file system, it cost 6-15 s per
 * process, and the hotplug script starts two (`dmu attach`, then cowd)
 * within libxl's 40 s limit. One file per program starts about three times
 * faster there (measured in test/vm: `dmu --version` 6.8 s -> 2.2 s).
 *
 * The compiled tree (dist/src/) stays what the tests import; the bundles are
 * what package.json's "bin", the hotplug path and the VM tests run.
 */
import { chmod } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const repo = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const ENTRIES = ['dmu', 'cowd', 'dscow_tool', 'dmu-attach', 'dmu-detach'];

// CommonJS dependencies (pino, commander) call require() for Node's own
// modules; an ESM bundle has no require unless it makes one.
const banner = "import { createRequire as __dmuCreateRequire } from 'node:module';\nconst require = __dmuCreateRequire(import.meta.url);";

await Promise.all(
	ENTRIES.map(async (name) => {
		const outfile = join(repo, 'dist/bin', `${name}.mjs`);
		await build({
			entryPoints: [join(repo, 'dist/src/cli', `${name}.js`)],
			outfile,
			bundle: true,
			platform: 'node',
			format: 'esm',
			target: 'node20',
			// Whitespace and syntax only: identifiers keep their names, so an
			// internal error under DMU_DEBUG still reads.
			minifyWhitespace: true,
			minifySyntax: true,
			legalComments: 'none',
			sourcemap: 'linked',
			banner: { js: banner },
			logLevel: 'warning',
		});
		await chmod(outfile, 0o755);
	}),
);
