/**
 * Names: the dm device name the user chose, and the target key derived
 * from it (the kernel accepts [A-Za-z0-9._-], at most DMU_KEY_MAX bytes;
 * it names /dev/dmu/<key>).
 */
import { DMU_KEY_MAX } from '../abi/constants.js';
import { DmuError } from '../errors.js';

export function validateName(name: string): void {
	// dm names: up to 127 bytes, no slash (it becomes /dev/mapper/<name>).
	if (!name || name.length > 127 || name.includes('/') || name === '.' || name === '..' || /\s/.test(name)) {
		throw new DmuError('DMU_ERR_BAD_NAME', `bad device name "${name}": use up to 127 characters, no "/" or spaces`);
	}
}

export function keyOf(name: string): string {
	return name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, DMU_KEY_MAX);
}

export const controlPath = (key: string) => `/dev/dmu/${key}`;
export const mapperPath = (name: string) => `/dev/mapper/${name}`;
