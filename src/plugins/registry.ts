/**
 * Finding plugins: built-in formats by name, external ones by module path
 * (the "generic plugin loader"), and probing a file's format from its header.
 *
 * Built-ins are imported lazily so `dmu info x.vhd` does not load the qcow2
 * code. To add a format: one line in BUILTIN below.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DmuError } from '../errors.js';
import type { Plugin } from './types.js';

type PluginModule = { default?: unknown; plugin?: unknown };

const BUILTIN: Readonly<Record<string, () => Promise<PluginModule>>> = {
	dscow: () => import('./dscow/index.js'),
	qcow2: () => import('./qcow2/index.js'),
	qcow: () => import('./qcow/index.js'),
	vmdk: () => import('./vmdk/index.js'),
	vhd: () => import('./vhd/index.js'),
	raw: () => import('./raw/index.js'),
};

/** Names of the built-in formats, in probe order (raw last: it matches anything). */
export const builtinFormats = (): string[] => Object.keys(BUILTIN);

function isPlugin(p: unknown): p is Plugin {
	if (typeof p !== 'object' || p === null) return false;
	const o = p as Record<string, unknown>;
	return (
		typeof o.name === 'string' &&
		['probe', 'create', 'open', 'check', 'info'].every((k) => typeof o[k] === 'function')
	);
}

function pluginOf(mod: PluginModule, where: string): Plugin {
	const p = mod.plugin ?? mod.default;
	if (!isPlugin(p)) {
		throw new DmuError(
			'DMU_ERR_NOT_A_PLUGIN',
			`${where} is not a dmu plugin: it must export \`plugin\` (or a default export) with name, probe, create, open, check and info`,
		);
	}
	return p;
}

/**
 * A plugin by built-in name ("qcow2") or by module path ("./my-format.js",
 * "/opt/dmu/fmt.js"): anything with a slash or ending in .js/.mjs is a path.
 */
export async function loadPlugin(nameOrPath: string): Promise<Plugin> {
	const builtin = BUILTIN[nameOrPath];
	if (builtin) return pluginOf(await builtin(), `built-in plugin ${nameOrPath}`);
	if (!/[/\\]|\.m?js$/.test(nameOrPath)) {
		throw new DmuError(
			'DMU_ERR_UNKNOWN_FORMAT',
			`unknown format "${nameOrPath}" (built-in: ${builtinFormats().join(', ')}; or give a plugin module path)`,
		);
	}
	const abs = isAbsolute(nameOrPath) ? nameOrPath : resolve(nameOrPath);
	let mod: PluginModule;
	try {
		mod = (await import(pathToFileURL(abs).href)) as PluginModule;
	} catch (e) {
		throw new DmuError('DMU_ERR_PLUGIN_LOAD', `cannot load plugin module ${abs}: ${(e as Error).message}`);
	}
	return pluginOf(mod, abs);
}

/** The first 4 KiB of a file (shorter for small files). */
export async function readHeader(path: string): Promise<Buffer> {
	let fh: FileHandle;
	try {
		fh = await open(path, 'r');
	} catch (e) {
		throw new DmuError('DMU_ERR_OPEN', `cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
	}
	try {
		const buf = Buffer.alloc(4096);
		const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
		return buf.subarray(0, bytesRead);
	} finally {
		await fh.close();
	}
}

/** Guess a file's format from its header; raw when nothing else matches. */
export async function probeFormat(path: string): Promise<Plugin> {
	const header = await readHeader(path);
	for (const name of builtinFormats()) {
		if (name === 'raw') continue;
		let plugin: Plugin;
		try {
			plugin = await loadPlugin(name);
		} catch {
			continue; // a format not built yet must not break probing of the others
		}
		if (plugin.probe(header, path)) return plugin;
	}
	return loadPlugin('raw');
}

/** loadPlugin(format) when a format is given, probeFormat(path) otherwise. */
export const pluginFor = (path: string, format?: string): Promise<Plugin> =>
	format ? loadPlugin(format) : probeFormat(path);
