// Gossipsub's message ids, computed by the host's OpenSSL in one synchronous call.
//
// With unsigned messages (StrictNoSign) gossipsub names a message by SHA-256 over its data, through
// multiformats' async hasher, then base64 in JavaScript for its seen-cache key.
// Every heartbeat received pays it (~9 a second at 10 nodes), ~5 % of an idle agent's CPU without the
// optimizing compilers. The bytes are the same as gossipsub's own (a peer's IDONTWANT names a message by
// them), so nodes with either function agree; the string is only this node's cache key.
import { createHash } from 'node:crypto'

/** SHA-256(data), the bytes gossipsub's `msgIdFnStrictNoSign` gives. */
export function gossipMessageId(msg: { data: Uint8Array }): Uint8Array {
  return createHash('sha256').update(msg.data).digest()
}

/** A message id as a cache key: base64 through Node's encoder. */
export function gossipMessageIdString(id: Uint8Array): string {
  return Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('base64')
}
