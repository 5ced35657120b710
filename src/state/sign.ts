// Signing and checking records. Apart from record.ts (the record's shape and value schemas) because it needs
// libp2p's keys and peer ids, which the command line, a client of the API's schemas, never loads.
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import {
  type CheckOptions,
  checkRecord,
  type RecordDraft,
  SIG_BYTES,
  type SignedRecord,
  signingBytes,
  type UnsignedRecord,
  type Verdict,
} from './record.ts'

export async function signRecord(privateKey: PrivateKey, draft: RecordDraft): Promise<SignedRecord> {
  const author = peerIdFromPrivateKey(privateKey).toString()
  const unsigned: UnsignedRecord = { ...draft, author }
  // A plain Uint8Array (Node hands back a Buffer), so signed and decoded records compare equal.
  const sig = new Uint8Array(await privateKey.sign(signingBytes(unsigned)))
  return { ...unsigned, sig }
}

/** True only when `sig` is the author's signature over exactly these fields. Never throws. */
export async function verifyRecord(r: SignedRecord): Promise<boolean> {
  try {
    if (r.sig.length !== SIG_BYTES) return false
    const peer = peerIdFromString(r.author)
    if (peer.type !== 'Ed25519' || peer.toString() !== r.author) return false
    return await peer.publicKey.verify(signingBytes(r), r.sig)
  } catch {
    return false
  }
}

/** The full gate for a record from the network: checkRecord, then the signature. */
export async function validateIncoming(
  r: SignedRecord,
  now: number,
  opts: CheckOptions = {},
): Promise<Verdict> {
  const verdict = checkRecord(r, now, opts)
  if (!verdict.ok) return verdict
  return (await verifyRecord(r)) ? verdict : { ok: false, reason: 'bad-signature' }
}
