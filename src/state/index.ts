// state/: the replicated map, the cluster's only source of truth. Signed records with hybrid logical clocks,
// the key space and its owners, the last-writer-wins merge (pure: hlc, keys, record, merge, digest); the
// Store (memory + LevelDB written behind); Replication (gossipsub + the anti-entropy sync protocol).
export * from './digest.ts'
export * from './hlc.ts'
export * from './keys.ts'
export * from './merge.ts'
export * from './record.ts'
export { Replication, type ReplicationStats, STATE_TOPIC } from './replication.ts'
export * from './sign.ts'
export {
  type ApplyResult,
  type DropCounter,
  SCHEMA_VERSION,
  Store,
  type StoreChange,
  type StoreStats,
} from './store.ts'
export { SYNC_PROTOCOL } from './sync-frames.ts'
