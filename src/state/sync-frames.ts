// The frames of the anti-entropy protocol, validated at the boundary. A session, on one stream:
//   initiator → responder  digest            (2,049 bytes, base64)
//   responder → initiator  diff              (the buckets that differ)
//   responder → initiator  records*, end     (the responder's records in those buckets)
//   initiator → responder  records*, end     (the initiator's records in those buckets)
// Each side merges what it receives, so one session leaves both with the union of those buckets.
import * as z from '../common/schema.ts'
import { BUCKETS, DIGEST_BYTES } from './digest.ts'
import { MAX_RECORD_BYTES } from './record.ts'

export const SYNC_PROTOCOL = '/km1s/sync/1.0.0'
/** One frame; a records frame is filled up to about half of this. */
export const MAX_FRAME_BYTES = 1 << 20
/** Records one side may send in one session; the next session continues where this one stopped. */
export const MAX_RECORDS_PER_SESSION = 50_000
export const RECORDS_FRAME_TARGET_BYTES = MAX_FRAME_BYTES / 2

export const DigestFrame = z.strictObject({ t: z.literal('digest'), d: z.base64() })
export const DiffFrame = z.strictObject({
  t: z.literal('diff'),
  b: z.array(z.number().check(z.int(), z.minimum(0), z.maximum(BUCKETS - 1))).check(z.maxLength(BUCKETS)),
})
export const RecordsFrame = z.strictObject({
  t: z.literal('records'),
  r: z.array(z.unknown()).check(z.maxLength(10_000)),
})
export const EndFrame = z.strictObject({ t: z.literal('end') })
export const Frame = z.discriminatedUnion('t', [DigestFrame, DiffFrame, RecordsFrame, EndFrame])
export type Frame = z.infer<typeof Frame>

export function encodeFrame(frame: Frame): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(frame))
}

/** A frame, or undefined for bytes that are not one (garbage is dropped and counted by the caller). */
export function decodeFrame(bytes: Uint8Array): Frame | undefined {
  if (bytes.length > MAX_FRAME_BYTES) return undefined
  try {
    const parsed = Frame.safeParse(JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)))
    if (!parsed.success) return undefined
    if (parsed.data.t === 'digest' && Buffer.from(parsed.data.d, 'base64').length !== DIGEST_BYTES)
      return undefined
    return parsed.data
  } catch {
    return undefined
  }
}

/** Splits wire records into frames of about RECORDS_FRAME_TARGET_BYTES each. */
export function recordFrames(wires: unknown[]): Frame[] {
  const frames: Frame[] = []
  let batch: unknown[] = []
  let size = 0
  for (const w of wires) {
    const n = Buffer.byteLength(JSON.stringify(w), 'utf8')
    if (n > MAX_RECORD_BYTES * 2) continue
    if (size + n > RECORDS_FRAME_TARGET_BYTES && batch.length > 0) {
      frames.push({ t: 'records', r: batch })
      batch = []
      size = 0
    }
    batch.push(w)
    size += n
  }
  if (batch.length > 0) frames.push({ t: 'records', r: batch })
  return frames
}
