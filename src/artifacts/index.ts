// Artifacts (docs/artifacts.md): a content-addressed store of files and trees shared peer to peer. Push
// chunks a file or tree (1 MiB CIDv1 raw blocks under a dag-cbor manifest) and tags it per arch; pull
// fetches the missing blocks from several peers at once over /km1s/blocks/1.0.0, checking every hash;
// ensure gives the runtime a read-only checkout for /app; gc removes what no tag or workload refers to.
export {
  Artifacts,
  type ArtifactsInit,
  type ArtifactsStats,
  type ArtifactView,
  type GcResult,
  type Progress,
  type PullResult,
  type PushResult,
} from './artifacts.ts'
export { CHUNK_BYTES, parseCid, rawCid } from './cid.ts'
export { elfArch } from './elf.ts'
export type { PullProgress } from './fetch.ts'
export { decodeManifest, encodeManifest, type Manifest, manifestSize, uniqueChunks } from './manifest.ts'
export { ANY_ARCH, parseRef, TagValue } from './refs.ts'
