/**
 * AbiError: bytes that are not a valid dm-userspace message (or a message
 * that cannot be encoded). Carries where in the batch it happened, like
 * pg-protocol's DatabaseError carries the wire fields.
 */
import { DmuError } from '../errors.js';

export const AbiErrorCode = {
	/** Batch length is not a whole number of DMU_MSG_SIZE records. */
	LENGTH: 'DMU_ERR_ABI_LENGTH',
	/** Message type the header does not define. */
	TYPE: 'DMU_ERR_ABI_TYPE',
	/** A reserved field is not zero. */
	RESERVED: 'DMU_ERR_ABI_RESERVED',
	/** A field value does not fit its wire type (encode side). */
	FIELD: 'DMU_ERR_ABI_FIELD',
} as const;
export type AbiErrorCode = (typeof AbiErrorCode)[keyof typeof AbiErrorCode];

export class AbiError extends DmuError {
	constructor(
		override readonly code: AbiErrorCode,
		message: string,
		/** Index of the offending message in its batch (0 for a single message). */
		readonly index = 0,
		/** Byte offset of the offending field or message in the buffer. */
		readonly offset = 0,
	) {
		super(code, message);
	}
}

export const isAbiError = (e: unknown): e is AbiError => e instanceof AbiError;
