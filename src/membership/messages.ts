// The heartbeat, validated at the gossip boundary. Its `id` must be the peer that handed it over (see
// Membership): a peer can only speak for itself.
import { z } from 'zod'

export const HEARTBEAT_TOPIC = 'km1s/heartbeat/1'
export const MAX_HEARTBEAT_BYTES = 2_048

export const NodeInfo = z.object({
  name: z.string().min(1).max(63),
  arch: z.string().min(1).max(16),
  cpus: z.number().int().min(1).max(4096),
  memory: z.number().int().min(0),
  version: z.string().min(1).max(32),
  addresses: z.array(z.string().max(200)).max(16),
  startedAt: z.number().int().min(0),
})
export type NodeInfo = z.infer<typeof NodeInfo>

export const Heartbeat = z.object({
  v: z.literal(1),
  id: z.string().min(1).max(128),
  seq: z.number().int().min(0),
  info: NodeInfo,
})
export type Heartbeat = z.infer<typeof Heartbeat>

export function encodeHeartbeat(hb: Heartbeat): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(hb))
}

export function decodeHeartbeat(data: Uint8Array): Heartbeat | undefined {
  if (data.length > MAX_HEARTBEAT_BYTES) return undefined
  try {
    const parsed = Heartbeat.safeParse(JSON.parse(new TextDecoder().decode(data)))
    return parsed.success ? parsed.data : undefined
  } catch {
    return undefined
  }
}
