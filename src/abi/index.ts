/**
 * The dm-userspace ABI in TypeScript: constants and layout (constants.ts),
 * typed messages (messages.ts), pure codec (codec.ts), and the control
 * device client cowd uses (control.ts).
 */
export * from './abi-error.js';
export * from './codec.js';
export * from './constants.js';
export * from './control.js';
export * from './messages.js';
