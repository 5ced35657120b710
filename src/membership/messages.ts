// The heartbeat, validated at the gossip boundary: tiny, because it is sent every second and never stored.
// What a node is (name, arch, CPUs, …) lives in its signed `node/` record in state/. Its `id` must be the
// peer that handed the message over (see Membership): a peer can only speak for itself. Nodes from before
// `fp` was added refuse heartbeats that carry it (strictObject): a cluster upgrades all its nodes together.
import * as z from '../common/schema.ts'

export const HEARTBEAT_TOPIC = 'km1s/heartbeat/1'
export const MAX_HEARTBEAT_BYTES = 256

export const Heartbeat = z.strictObject({
  v: z.literal(1),
  id: z.string().check(z.minLength(1), z.maxLength(128)),
  seq: z.number().check(z.int(), z.minimum(0)),
  /**
   * The fingerprint of the sender's state digest (state/digest.ts), absent while its store is changing:
   * a peer whose fingerprint equals its own skips the 30 s anti-entropy session (state/replication.ts).
   */
  fp: z.optional(z.string().check(z.minLength(1), z.maxLength(32))),
})
export type Heartbeat = z.infer<typeof Heartbeat>

// One each for the process: a new TextDecoder per heartbeat cost more than the rest of the decode.
const utf8Encoder = new TextEncoder()
const utf8Decoder = new TextDecoder()

export function encodeHeartbeat(hb: Heartbeat): Uint8Array {
  return utf8Encoder.encode(JSON.stringify(hb))
}

export function decodeHeartbeat(data: Uint8Array): Heartbeat | undefined {
  if (data.length > MAX_HEARTBEAT_BYTES) return undefined
  try {
    const parsed = Heartbeat.safeParse(JSON.parse(utf8Decoder.decode(data)))
    return parsed.success ? parsed.data : undefined
  } catch {
    return undefined
  }
}
