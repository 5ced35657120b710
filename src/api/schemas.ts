// The control API's wire types: one zod schema per request and response, shared by server and client.
import { z } from 'zod'

export const ApiError = z.object({ error: z.object({ code: z.string(), message: z.string() }) })
export type ApiError = z.infer<typeof ApiError>

export const Empty = z.object({}).strict()

export const Health = z.object({ ok: z.literal(true), name: z.string(), id: z.string(), pid: z.number() })
export type Health = z.infer<typeof Health>

export const NodeView = z.object({
  name: z.string(),
  id: z.string(),
  state: z.enum(['alive', 'suspect', 'dead']),
  self: z.boolean(),
  addresses: z.array(z.string()),
  arch: z.string(),
  cpus: z.number(),
  memory: z.number(),
  labels: z.record(z.string(), z.string()),
  version: z.string(),
  /** Seconds since the node's agent started. */
  uptime: z.number(),
  /** Milliseconds since this node last heard from it. */
  lastHeard: z.number(),
})
export type NodeView = z.infer<typeof NodeView>
export const NodeList = z.array(NodeView)

export const StatusView = z.object({
  name: z.string(),
  id: z.string(),
  cluster: z.string(),
  version: z.string(),
  pid: z.number(),
  dataDir: z.string(),
  uptime: z.number(),
  addresses: z.array(z.string()),
  nodes: z.object({ alive: z.number(), suspect: z.number(), dead: z.number() }),
  mesh: z.object({
    connectedPeers: z.number(),
    knownPeers: z.number(),
    dialFailures: z.number(),
    handshakeFailures: z.number(),
  }),
  membership: z.object({ heartbeatsReceived: z.number(), heartbeatsDropped: z.number() }),
  memory: z.object({ rss: z.number(), heapUsed: z.number() }),
})
export type StatusView = z.infer<typeof StatusView>

/** The route table: method and path → request and response schemas. */
export const routes = {
  health: { method: 'GET', path: '/v1/health', request: Empty, response: Health },
  nodes: { method: 'GET', path: '/v1/nodes', request: Empty, response: NodeList },
  status: { method: 'GET', path: '/v1/status', request: Empty, response: StatusView },
} as const

export type Routes = typeof routes
export type RouteName = keyof Routes
export type RequestOf<R extends RouteName> = z.infer<Routes[R]['request']>
export type ResponseOf<R extends RouteName> = z.infer<Routes[R]['response']>
