// The control API's wire types: one zod schema per request and response, shared by server and client.
import * as z from '../common/schema.ts'
import { LabelKey, LabelValue } from '../state/record.ts'

export const ApiError = z.object({ error: z.object({ code: z.string(), message: z.string() }) })
export type ApiError = z.infer<typeof ApiError>

export const Empty = z.strictObject({})

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
  state: z.object({
    records: z.number(),
    tombstones: z.number(),
    /** A short hash of the anti-entropy digest: equal on two nodes exactly when they hold the same records. */
    digest: z.string(),
    applied: z.number(),
    stale: z.number(),
    dropped: z.record(z.string(), z.number()),
    pendingWrites: z.number(),
    flushes: z.number(),
    published: z.number(),
    syncSessions: z.number(),
    syncFailures: z.number(),
    recordsSent: z.number(),
    recordsReceived: z.number(),
  }),
  memory: z.object({ rss: z.number(), heapUsed: z.number() }),
})
export type StatusView = z.infer<typeof StatusView>

/** A node as the user names it: its name, its peer id, or the tail of its peer id. */
const NodeRef = z.string().check(z.minLength(1), z.maxLength(128))
export const LabelRequest = z.strictObject({
  node: NodeRef,
  set: z.record(LabelKey, LabelValue),
  remove: z.array(LabelKey).check(z.maxLength(64)),
})
export const ForgetRequest = z.strictObject({ node: NodeRef })
export const Forgotten = z.object({ id: z.string(), name: z.string() })
export const WatchRequest = z.strictObject({ prefix: z.string().check(z.maxLength(256)) })
export const WatchEvent = z.object({
  key: z.string(),
  hlc: z.string(),
  author: z.string(),
  deleted: z.boolean(),
  origin: z.enum(['local', 'remote']),
  /** When the watched node applied it (ms since the epoch). */
  at: z.number(),
})
export type WatchEvent = z.infer<typeof WatchEvent>

/** The route table: method and path → request and response schemas. */
export const routes = {
  health: { method: 'GET', path: '/v1/health', request: Empty, response: Health },
  nodes: { method: 'GET', path: '/v1/nodes', request: Empty, response: NodeList },
  status: { method: 'GET', path: '/v1/status', request: Empty, response: StatusView },
  label: { method: 'POST', path: '/v1/label', request: LabelRequest, response: NodeView },
  forget: { method: 'POST', path: '/v1/forget', request: ForgetRequest, response: Forgotten },
} as const

/** Streaming routes: the response is newline-delimited JSON, one item per line, until the client leaves. */
export const streams = {
  watch: { method: 'GET', path: '/v1/watch', request: WatchRequest, item: WatchEvent },
} as const
export type Streams = typeof streams
export type StreamName = keyof Streams
export type StreamRequestOf<S extends StreamName> = z.infer<Streams[S]['request']>
export type StreamItemOf<S extends StreamName> = z.infer<Streams[S]['item']>

export type Routes = typeof routes
export type RouteName = keyof Routes
export type RequestOf<R extends RouteName> = z.infer<Routes[R]['request']>
export type ResponseOf<R extends RouteName> = z.infer<Routes[R]['response']>
