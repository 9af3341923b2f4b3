/**
 * Imported first by the cowd entry point: libuv reads UV_THREADPOOL_SIZE
 * once, when the pool is first used. Each disk keeps one pool thread
 * blocked in read(2) on its control device (Node cannot poll a char
 * device), so the default 4 threads would leave too few for file I/O.
 */
const MIN_THREADS = 16;
const current = Number(process.env.UV_THREADPOOL_SIZE ?? 0);
if (!(current >= MIN_THREADS)) process.env.UV_THREADPOOL_SIZE = String(MIN_THREADS);
export {};
