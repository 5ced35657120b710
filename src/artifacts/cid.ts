// Content addresses: every chunk is a CIDv1 (raw, sha256) of its bytes; the manifest a CIDv1 (dag-cbor).
// Hashing is Node's own sha256 (multiformats' node build uses node:crypto), synchronous and ~1 ms per MiB.
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'

export { CID }
export const RAW_CODE = raw.code
export const DAG_CBOR_CODE = dagCbor.code
/** The chunk size of files (DESIGN.md): big enough that a 64 MB artifact is 64 blocks, small enough to stream. */
export const CHUNK_BYTES = 1 << 20
/** The largest block anyone sends or stores: a chunk, or a manifest of about 25,000 chunks. */
export const MAX_BLOCK_BYTES = 1 << 20

function digestOf(bytes: Uint8Array) {
  const d = sha256.digest(bytes)
  if (d instanceof Promise) throw new Error('sha256 is expected to be synchronous under Node')
  return d
}

export function rawCid(bytes: Uint8Array): CID {
  return CID.createV1(RAW_CODE, digestOf(bytes))
}

export function dagCborCid(bytes: Uint8Array): CID {
  return CID.createV1(DAG_CBOR_CODE, digestOf(bytes))
}

/** Whether `bytes` are the block `cid` names: the one check between a peer's bytes and the store. */
export function blockMatches(cid: CID, bytes: Uint8Array): boolean {
  if (cid.multihash.code !== sha256.code) return false
  if (cid.code !== RAW_CODE && cid.code !== DAG_CBOR_CODE) return false
  const d = digestOf(bytes)
  return Buffer.compare(Buffer.from(d.digest), Buffer.from(cid.multihash.digest)) === 0
}

/** A CID from user or peer text, or undefined; only the kinds km1s makes (v1, raw or dag-cbor, sha256). */
export function parseCid(text: string): CID | undefined {
  if (text.length > 128) return undefined
  try {
    const cid = CID.parse(text)
    if (cid.version !== 1 || cid.multihash.code !== sha256.code) return undefined
    if (cid.code !== RAW_CODE && cid.code !== DAG_CBOR_CODE) return undefined
    return cid
  } catch {
    return undefined
  }
}

export function cidFromBytes(bytes: Uint8Array): CID | undefined {
  try {
    const cid = CID.decode(bytes)
    return parseCid(cid.toString())
  } catch {
    return undefined
  }
}
