// The control API's wire types: one zod schema per request and response, shared by server and client.
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'
import {
  ContainerName,
  ContainerSpec,
  type ContainerStatus,
  type LogEntry,
  ProcessName,
  ProcessSpec,
} from '../runtime/types.ts'
import { LabelKey, LabelValue, ReplicaState, WorkloadName, WorkloadValue } from '../state/record.ts'

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

/** The node network and its WireGuard overlay (network/ NetworkStatus); absent when the agent runs none. */
export const NetworkView = z.object({
  subnet: z.string(),
  clusterCidr: z.string(),
  bridge: z.string(),
  mtu: z.number(),
  interface: z.string(),
  kind: z.nullable(z.string()),
  pid: z.nullable(z.number()),
  restarts: z.number(),
  publicKey: z.string(),
  listenPort: z.number(),
  applies: z.number(),
  applyErrors: z.number(),
  lastError: z.nullable(z.string()),
  peers: z.array(
    z.object({
      id: z.string(),
      name: z.string(),
      state: z.string(),
      publicKey: z.string(),
      subnet: z.nullable(z.string()),
      endpoint: z.nullable(z.string()),
      /** ms since the epoch; null = never. */
      latestHandshake: z.nullable(z.number()),
      rxBytes: z.number(),
      txBytes: z.number(),
    }),
  ),
})
export type NetworkView = z.infer<typeof NetworkView>

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
  membership: z.object({
    heartbeatsReceived: z.number(),
    heartbeatsDropped: z.number(),
    deafReconnects: z.number(),
  }),
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
    roundsSkipped: z.number(),
    syncFailures: z.number(),
    recordsSent: z.number(),
    recordsReceived: z.number(),
  }),
  memory: z.object({
    rss: z.number(),
    heapUsed: z.number(),
    heapTotal: z.number(),
    external: z.number(),
    arrayBuffers: z.number(),
  }),
  /** The node's DNS server; null when the agent runs none. */
  dns: z.nullable(
    z.object({
      listening: z.array(z.string()),
      missing: z.array(z.string()),
      upstreams: z.array(z.string()),
      names: z.number(),
      queries: z.number(),
      answered: z.number(),
      nxdomain: z.number(),
      forwarded: z.number(),
      refused: z.number(),
      formerr: z.number(),
      dropped: z.number(),
      rateLimited: z.number(),
    }),
  ),
  /** /km1s/remote/1.0.0 (docs/remote.md). */
  remote: z.object({
    served: z.number(),
    asked: z.number(),
    badFrames: z.number(),
    failures: z.number(),
    open: z.number(),
  }),
  network: z.optional(NetworkView),
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

const ExitInfoView = z.object({
  reason: z.enum([
    'exited',
    'signal',
    'oom-killed',
    'not-found',
    'not-executable',
    'exec-format',
    'start-failed',
    'stopped',
  ]),
  code: z.nullable(z.number()),
  signal: z.nullable(z.string()),
  message: z.string(),
  at: z.string(),
})
const ProcessStatusView = z.object({
  name: z.string(),
  state: z.enum(['starting', 'running', 'backoff', 'exited', 'stopping']),
  pid: z.nullable(z.number()),
  restarts: z.number(),
  lastExit: z.nullable(ExitInfoView),
  nextStartAt: z.nullable(z.string()),
})
/** Mirrors `ContainerStatus` of runtime/types.ts (checked below, both ways). */
export const ContainerStatusView = z.object({
  name: z.string(),
  state: z.enum(['creating', 'running', 'degraded', 'exited', 'removing', 'failed']),
  ip: z.nullable(z.string()),
  processes: z.array(ProcessStatusView),
  error: z.nullable(z.string()),
  createdAt: z.string(),
})
export const ContainerList = z.array(ContainerStatusView)
export const ContainerRef = z.strictObject({ name: ContainerName })

/** `km1s containers --all` / `--node N`: every node's containers, asked over the mesh (docs/remote.md). */
export const ClusterContainersRequest = z.strictObject({
  node: z.optional(NodeRef),
  /** Only the node that runs this container (this node first, then the others). */
  container: z.optional(ContainerName),
})
export const NodeContainersView = z.object({
  node: z.string(),
  id: z.string(),
  containers: ContainerList,
  /** Why this node's containers are missing (dead, unreachable); null when it answered. */
  error: z.nullable(z.string()),
})
export const ClusterContainers = z.array(NodeContainersView)

/** A GET request arrives as query strings: numbers and booleans are read from text. */
export const LogsRequest = z.strictObject({
  container: ContainerName,
  process: z.optional(ProcessName),
  sinceMs: z.optional(z.coerce.number().check(z.int(), z.minimum(0))),
  tail: z.optional(z.coerce.number().check(z.int(), z.minimum(0), z.maximum(1_000_000))),
  follow: z.optional(z.stringbool()),
})
export const LogEntryView = z.object({
  time: z.string(),
  process: z.string(),
  stream: z.enum(['stdout', 'stderr']),
  line: z.string(),
})

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
const mirrorsRuntimeTypes: [
  Same<z.infer<typeof ContainerStatusView>, ContainerStatus>,
  Same<z.infer<typeof LogEntryView>, LogEntry>,
] = [true, true]
void mirrorsRuntimeTypes

/** A terminal's columns or rows: the kernel's winsize holds 16 bits. */
const TermSize = z.number().check(z.int(), z.minimum(1), z.maximum(65_535))
export const ExecRequestView = z.strictObject({
  container: ContainerName,
  args: ProcessSpec.shape.args,
  tty: z.boolean(),
  process: z.optional(ProcessName),
  env: z.optional(ProcessSpec.shape.env),
  cols: z.optional(TermSize),
  rows: z.optional(TermSize),
})
export type ExecRequestView = z.infer<typeof ExecRequestView>

// --- workloads (scheduler/) ---
export const WorkloadList = z.array(WorkloadValue)
export const WorkloadRef = z.strictObject({ name: WorkloadName })
export const ScaleRequest = z.strictObject({ name: WorkloadName, replicas: WorkloadValue.shape.replicas })
/** One replica as `km1s ps` shows it, from the status records of every node. */
export const ReplicaView = z.object({
  name: z.string(),
  workload: z.string(),
  node: z.string(),
  /** The status record's state, or `unknown` when its node is not alive in this node's view. */
  state: z.union([ReplicaState, z.literal('unknown')]),
  ip: z.nullable(z.string()),
  /** Seconds since the container started; null when it has not. */
  uptime: z.nullable(z.number()),
  restarts: z.number(),
  reason: z.nullable(z.string()),
  index: z.number(),
  /** The workload version (spec hash) it runs. */
  spec: z.string(),
  current: z.boolean(),
})
export type ReplicaView = z.infer<typeof ReplicaView>
export const ReplicaList = z.array(ReplicaView)
/** Replicas this node's scheduler could place on no node of its view, with why. */
export const UnplacedList = z.array(z.object({ workload: z.string(), index: z.number(), reason: z.string() }))
// --- artifacts (docs/artifacts.md) ---
const ArtifactRef = z.string().check(z.minLength(1), z.maxLength(200))
const ArchField = z.string().check(z.regex(/^[a-z0-9]{1,16}$/, 'an arch is 1–16 lowercase letters or digits'))
/** Push names a path on the agent's machine (the CLI sends it absolute): no file travels through the API. */
export const PushRequest = z.strictObject({
  path: z.string().check(z.minLength(1), z.maxLength(4096)),
  name: ArtifactRef,
  arch: z.optional(ArchField),
})
export const PullRequest = z.strictObject({
  ref: ArtifactRef,
  arch: z.optional(ArchField),
  /** Also write the files into a read-only checkout directory (for `pull -o`, which copies from it). */
  checkout: z.optional(z.stringbool()),
})
const ProgressFields = {
  bytes: z.number(),
  total: z.number(),
  peers: z.number(),
  badBlocks: z.number(),
}
export const PushResultView = z.object({
  name: z.string(),
  tag: z.string(),
  arch: z.string(),
  cid: z.string(),
  size: z.number(),
  files: z.number(),
})
export const PullResultView = z.object({
  cid: z.string(),
  arch: z.string(),
  size: z.number(),
  dir: z.nullable(z.string()),
  kind: z.enum(['file', 'dir']),
  badBlocks: z.number(),
  peers: z.number(),
})
const eventOf = <R extends z.ZodMiniType>(result: R) =>
  z.object({
    t: z.enum(['progress', 'done', 'error']),
    ...ProgressFields,
    result: z.optional(result),
    code: z.optional(z.string()),
    message: z.optional(z.string()),
  })
export const PushEvent = eventOf(PushResultView)
export const PullEvent = eventOf(PullResultView)
export const ArtifactView = z.object({
  name: z.string(),
  tag: z.string(),
  arch: z.string(),
  size: z.number(),
  cid: z.string(),
  local: z.boolean(),
  pushedAt: z.number(),
})
export const ArtifactList = z.array(ArtifactView)
export const ArtifactRemoveRequest = z.strictObject({ ref: ArtifactRef, arch: z.optional(ArchField) })
export const GcView = z.object({ removedBlocks: z.number(), freedBytes: z.number(), keptRoots: z.number() })
export const ArtifactRemoved = z.object({ ...GcView.shape, removedTags: z.number() })
export const ArtifactsStatsView = z.object({
  blocks: z.number(),
  bytes: z.number(),
  quota: z.number(),
  blocksServed: z.number(),
  bytesServed: z.number(),
  badBlocksReceived: z.number(),
  garbageRequests: z.number(),
  bannedPeers: z.number(),
  fastLanes: z.number(),
  fastLanesRefused: z.number(),
})

// --- services (services/) ---
/** One service as `km1s services` shows it: its virtual IP and how many of its replicas serve. */
export const ServiceView = z.object({
  name: z.string(),
  /** null for a headless service. */
  ip: z.nullable(z.string()),
  ports: z.array(z.number()),
  workload: z.string(),
  headless: z.boolean(),
  /** Replicas running and passing their health check: DNS answers and the load balancer use these. */
  healthy: z.number(),
  /** Replicas with a status record. */
  total: z.number(),
  /** The serving replicas' IPs. */
  endpoints: z.array(z.string()),
})
export type ServiceView = z.infer<typeof ServiceView>
export const ServiceList = z.array(ServiceView)

/** The route table: method and path → request and response schemas. */
export const routes = {
  health: { method: 'GET', path: '/v1/health', request: Empty, response: Health },
  nodes: { method: 'GET', path: '/v1/nodes', request: Empty, response: NodeList },
  status: { method: 'GET', path: '/v1/status', request: Empty, response: StatusView },
  label: { method: 'POST', path: '/v1/label', request: LabelRequest, response: NodeView },
  forget: { method: 'POST', path: '/v1/forget', request: ForgetRequest, response: Forgotten },
  containers: { method: 'GET', path: '/v1/containers', request: Empty, response: ContainerList },
  containerCreate: {
    method: 'POST',
    path: '/v1/containers',
    request: ContainerSpec,
    response: ContainerStatusView,
  },
  containerRemove: { method: 'POST', path: '/v1/containers/remove', request: ContainerRef, response: Empty },
  clusterContainers: {
    method: 'GET',
    path: '/v1/cluster/containers',
    request: ClusterContainersRequest,
    response: ClusterContainers,
  },
  workloads: { method: 'GET', path: '/v1/workloads', request: Empty, response: WorkloadList },
  workloadPut: { method: 'POST', path: '/v1/workloads', request: WorkloadValue, response: WorkloadValue },
  workloadScale: {
    method: 'POST',
    path: '/v1/workloads/scale',
    request: ScaleRequest,
    response: WorkloadValue,
  },
  workloadStop: { method: 'POST', path: '/v1/workloads/stop', request: WorkloadRef, response: WorkloadValue },
  workloadRemove: { method: 'POST', path: '/v1/workloads/remove', request: WorkloadRef, response: Empty },
  ps: { method: 'GET', path: '/v1/ps', request: Empty, response: ReplicaList },
  unplaced: { method: 'GET', path: '/v1/unplaced', request: Empty, response: UnplacedList },
  artifacts: { method: 'GET', path: '/v1/artifacts', request: Empty, response: ArtifactList },
  artifactsStatus: {
    method: 'GET',
    path: '/v1/artifacts/status',
    request: Empty,
    response: ArtifactsStatsView,
  },
  artifactRemove: {
    method: 'POST',
    path: '/v1/artifacts/remove',
    request: ArtifactRemoveRequest,
    response: ArtifactRemoved,
  },
  artifactGc: { method: 'POST', path: '/v1/artifacts/gc', request: Empty, response: GcView },
  services: { method: 'GET', path: '/v1/services', request: Empty, response: ServiceList },
} as const

/** Streaming routes: the response is newline-delimited JSON, one item per line, until the client leaves. */
export const streams = {
  watch: { method: 'GET', path: '/v1/watch', request: WatchRequest, item: WatchEvent },
  logs: { method: 'GET', path: '/v1/logs', request: LogsRequest, item: LogEntryView },
  push: { method: 'GET', path: '/v1/push', request: PushRequest, item: PushEvent },
  pull: { method: 'GET', path: '/v1/pull', request: PullRequest, item: PullEvent },
} as const
export type Streams = typeof streams
export type StreamName = keyof Streams
export type StreamRequestOf<S extends StreamName> = z.infer<Streams[S]['request']>
export type StreamItemOf<S extends StreamName> = z.infer<Streams[S]['item']>

export type Routes = typeof routes
export type RouteName = keyof Routes
/** What a handler receives: the request after validation, defaults filled in. */
export type RequestOf<R extends RouteName> = z.infer<Routes[R]['request']>
/** What a client may send: defaults may be left out. */
export type RequestInputOf<R extends RouteName> = z.input<Routes[R]['request']>
export type ResponseOf<R extends RouteName> = z.infer<Routes[R]['response']>

/**
 * Upgrade routes: a bidirectional session over the same socket. The request is JSON, base64url-encoded in
 * the `km1s-request` header, so it can be refused with an ordinary error answer before the switch.
 */
export const upgrades = {
  exec: { method: 'POST', path: '/v1/exec', protocol: 'km1s-exec', request: ExecRequestView },
} as const
export const UPGRADE_REQUEST_HEADER = 'km1s-request'
export type Upgrades = typeof upgrades
export type UpgradeName = keyof Upgrades
export type UpgradeRequestOf<U extends UpgradeName> = z.infer<Upgrades[U]['request']>

// --- exec frames: [type u8][payload length u32 big-endian][payload] ---

/** Frame types: 1–3 go from the client to the agent, 4–7 from the agent to the client. */
export const Frame = { stdin: 1, stdinEof: 2, resize: 3, stdout: 4, stderr: 5, exit: 6, error: 7 } as const
export type FrameType = (typeof Frame)[keyof typeof Frame]
export const MAX_FRAME_PAYLOAD = 64 * 1024
const HEADER_BYTES = 5

export const ResizeFrame = z.strictObject({ cols: TermSize, rows: TermSize })
export const ExitFrame = z.object({ code: z.nullable(z.number()), signal: z.nullable(z.string()) })
export type ExitFrame = z.infer<typeof ExitFrame>
export const ErrorFrame = z.object({ code: z.string(), message: z.string() })

export function encodeFrame(type: number, payload: Uint8Array | string = ''): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload
  if (body.length > MAX_FRAME_PAYLOAD) throw new RangeError(`frame payload of ${body.length} bytes`)
  const frame = Buffer.allocUnsafe(HEADER_BYTES + body.length)
  frame.writeUInt8(type, 0)
  frame.writeUInt32BE(body.length, 1)
  frame.set(body, HEADER_BYTES)
  return frame
}

export const encodeJsonFrame = (type: number, value: unknown): Buffer =>
  encodeFrame(type, JSON.stringify(value))

/** `data` as frames of at most MAX_FRAME_PAYLOAD bytes each. */
export function encodeChunked(type: number, data: Uint8Array): Buffer[] {
  const frames: Buffer[] = []
  for (let i = 0; i < data.length; i += MAX_FRAME_PAYLOAD)
    frames.push(encodeFrame(type, data.subarray(i, i + MAX_FRAME_PAYLOAD)))
  return frames
}

export interface DecodedFrame {
  type: number
  payload: Buffer
}

/**
 * Splits a byte stream into frames, copying each byte about once however the stream is cut (a peer sending
 * one byte at a time costs no more); a length above MAX_FRAME_PAYLOAD throws ERR_BAD_FRAME before its
 * payload is waited for, so it never holds more than one frame's bytes beyond what one read brought.
 */
export class FrameDecoder {
  #chunks: Buffer[] = []
  #size = 0

  push(chunk: Buffer): DecodedFrame[] {
    if (chunk.length > 0) {
      this.#chunks.push(chunk)
      this.#size += chunk.length
    }
    const frames: DecodedFrame[] = []
    for (;;) {
      if (this.#size < HEADER_BYTES) return frames
      const header = this.#peek(HEADER_BYTES)
      const length = header.readUInt32BE(1)
      if (length > MAX_FRAME_PAYLOAD)
        throw new Km1sError(
          'ERR_BAD_FRAME',
          `A frame announced ${length} bytes, more than the ${MAX_FRAME_PAYLOAD}-byte limit.`,
        )
      if (this.#size < HEADER_BYTES + length) return frames
      const frame = this.#take(HEADER_BYTES + length)
      frames.push({ type: header.readUInt8(0), payload: frame.subarray(HEADER_BYTES) })
    }
  }

  /** Bytes received that do not yet form a whole frame. */
  get pending(): number {
    return this.#size
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0] as Buffer
    if (first.length >= n) return first.subarray(0, n)
    const joined = Buffer.concat(this.#chunks)
    this.#chunks = [joined]
    return joined.subarray(0, n)
  }

  #take(n: number): Buffer {
    const first = this.#chunks[0] as Buffer
    let out: Buffer
    if (first.length >= n) {
      out = first.subarray(0, n)
      if (first.length === n) this.#chunks.shift()
      else this.#chunks[0] = first.subarray(n)
    } else {
      const joined = Buffer.concat(this.#chunks)
      out = joined.subarray(0, n)
      this.#chunks = joined.length > n ? [joined.subarray(n)] : []
    }
    this.#size -= n
    return out
  }
}
