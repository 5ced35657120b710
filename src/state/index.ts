// state/: the pure core of the replicated map. Signed records with hybrid logical clocks, the key space
// and its owners, the last-writer-wins merge, tombstone collection and anti-entropy digests. No I/O: the
// store, replication and persistence build on these functions.
export * from './digest.ts'
export * from './hlc.ts'
export * from './keys.ts'
export * from './merge.ts'
export * from './record.ts'
