// The km1s block protocol, /km1s/blocks/1.0.0: one stream per (puller, provider), requests pipelined up to a
// window, answers in request order. Hand-written instead of bitswap: it is the heart of the swarm, and it
// measured faster and leaner here (docs/artifacts.md). Every frame is length-prefixed (@libp2p/utils).
//   request:  [op u8][CID bytes]      op 1 WANT a block, op 2 HAVE: which chunks of this root do you hold?
//             [3]                     BULK: offer me a fast lane (bulk.ts) for the rest of this session
//   answer:   [0][block bytes]        the block (the puller checks it against the CID)
//             [1]                     not here
//             [2][bitfield]           for HAVE: bit i = the i-th chunk of the manifest's uniqueChunks()
//             [3][bitfield]           for HAVE from a node holding every chunk: the chunks it offers now
//             [4][port u16][ticket 16][secret 32]   for BULK: connect there; [1] when there is no fast lane
import { type CID, cidFromBytes, MAX_BLOCK_BYTES } from './cid.ts'

export const BLOCKS_PROTOCOL = '/km1s/blocks/1.0.0'
export const OP_WANT = 1
export const OP_HAVE = 2
export const OP_BULK = 3
export const ANS_BLOCK = 0
export const ANS_NONE = 1
export const ANS_HAVE = 2
export const ANS_SEED = 3
export const ANS_BULK = 4
export const MAX_REQUEST_BYTES = 80
export const MAX_ANSWER_BYTES = MAX_BLOCK_BYTES + 1

export type Request = { op: typeof OP_WANT | typeof OP_HAVE; cid: CID } | { op: typeof OP_BULK }

export function encodeRequest(op: number, cid: CID): Uint8Array {
  const out = new Uint8Array(1 + cid.bytes.length)
  out[0] = op
  out.set(cid.bytes, 1)
  return out
}

/** A request, or undefined for garbage (the stream is then ended and the peer counted). */
export function decodeRequest(bytes: Uint8Array): Request | undefined {
  if (bytes.length === 1 && bytes[0] === OP_BULK) return { op: OP_BULK }
  if (bytes.length < 2 || bytes.length > MAX_REQUEST_BYTES) return undefined
  const op = bytes[0]
  if (op !== OP_WANT && op !== OP_HAVE) return undefined
  const cid = cidFromBytes(bytes.subarray(1))
  return cid ? { op, cid } : undefined
}

export function bitfield(bits: boolean[]): Uint8Array {
  const out = new Uint8Array(Math.ceil(bits.length / 8))
  bits.forEach((b, i) => {
    if (b) out[i >> 3] = (out[i >> 3] ?? 0) | (1 << (i & 7))
  })
  return out
}

export function bitAt(field: Uint8Array, i: number): boolean {
  return (((field[i >> 3] ?? 0) >> (i & 7)) & 1) === 1
}
