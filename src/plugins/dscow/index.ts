/**
 * dscow: the project's own copy-on-write format, built for dm-userspace.
 * A sparse file where block N always lives at firstBlock + N*blockSize, so
 * once the kernel knows a block is here it never asks again. See layout.ts
 * for the on-disk format and image.ts for the mapping rules.
 */
import type { Plugin } from '../types.js';
import { check, info } from './check.js';
import { create } from './create.js';
import { DscowImage } from './image.js';
import { hasMagic } from './layout.js';

export const plugin: Plugin = {
	name: 'dscow',
	probe: (header) => hasMagic(header),
	create: async (path, opts) => {
		await create(path, opts);
	},
	open: (path, opts) => DscowImage.open(path, opts),
	check,
	info,
};

export default plugin;
