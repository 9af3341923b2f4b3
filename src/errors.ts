/**
 * Errors meant for the user: one clear line, a stable code, an exit status.
 * Everything else that escapes is a bug and is reported as such by the CLI.
 */
export class DmuError extends Error {
	override readonly name = 'DmuError';
	constructor(
		/** Stable code, e.g. DMU_ERR_BAD_IMAGE. */
		readonly code: string,
		message: string,
		/** Process exit status the CLI uses for this error. */
		readonly exitCode = 1,
	) {
		super(message);
	}
}

export const isDmuError = (e: unknown): e is DmuError => e instanceof DmuError;
