// The signed record, its canonical signing bytes, its wire form and the checks every incoming record
// passes before it may be merged. A record that fails any check is dropped and counted, never merged.
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'
import { RestartPolicy } from '../runtime/types.ts'
import { decodeHlc, encodeHlc, type Hlc, isValidHlc, MAX_DRIFT_MS } from './hlc.ts'
import { type KeyKind, MAX_KEY_BYTES, mayWrite, parseKey } from './keys.ts'

/** The largest encoded (wire) record; bounds memory per record and per gossip message. */
export const MAX_RECORD_BYTES = 64 * 1024
// JSON nesting deeper than this is refused before any recursive walk, so no input can blow the stack.
export const MAX_VALUE_DEPTH = 32
export const SIG_BYTES = 64
const SIGNING_DOMAIN = 'km1s-record/1'

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }

export type UnsignedRecord = {
  readonly key: string
  /** null for a tombstone. */
  readonly value: JsonValue
  readonly hlc: Hlc
  /** The writer's peer id (Ed25519, base58btc); its public key verifies `sig`. */
  readonly author: string
  readonly deleted: boolean
}
export type SignedRecord = UnsignedRecord & { readonly sig: Uint8Array }
/** What a writer supplies; the author comes from the signing key, so it cannot be mistyped. */
export type RecordDraft = Omit<UnsignedRecord, 'author'>

export type DropReason =
  | 'bad-signature'
  | 'forged-owner'
  | 'invalid-value'
  | 'oversized'
  | 'unknown-key'
  | 'clock-drift'
  | 'malformed'
export type Verdict = { ok: true } | { ok: false; reason: DropReason }

// Values per key kind, each its owner subsystem's schema (also bounded by MAX_RECORD_BYTES and
// MAX_VALUE_DEPTH): a value that fails its kind's schema is dropped as invalid-value, never merged.
export const LabelKey = z
  .string()
  .check(
    z.regex(
      /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/,
      'a label key is letters, digits, dashes, dots and underscores, optionally after a DNS prefix and a slash',
    ),
  )
export const LabelValue = z
  .string()
  .check(
    z.regex(
      /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/,
      'a label value is at most 63 letters, digits, dashes, dots and underscores',
    ),
  )
/** A node's own record: what `km1s nodes` shows besides liveness (membership/ writes it). */
export const NodeValue = z.strictObject({
  name: z.string().check(z.regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/)),
  arch: z.string().check(z.minLength(1), z.maxLength(16)),
  cpus: z.number().check(z.int(), z.minimum(1), z.maximum(4096)),
  memory: z.number().check(z.int(), z.minimum(0)),
  version: z.string().check(z.minLength(1), z.maxLength(32)),
  addresses: z.array(z.string().check(z.maxLength(200))).check(z.maxLength(16)),
  startedAt: z.number().check(z.int(), z.minimum(0)),
  /** The node's WireGuard public key, once the network subsystem has one. */
  // A base64 X25519 key exactly: it becomes an argument of `wg set` on every other node.
  wgPublicKey: z.nullable(z.string().check(z.regex(/^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/))),
  /** The node's WireGuard UDP port; its underlay endpoints are the IPs of `addresses` (network/). */
  wgPort: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(65535))),
})
export type NodeValue = z.infer<typeof NodeValue>

// --- workload/<name> and status/<peer>/<container>: owned by the scheduler (docs/scheduler.md) ---

/** Replica containers are `<workload>-<index>` and container names hold at most 40 characters. */
export const MAX_WORKLOAD_NAME = 32
export const MAX_REPLICAS = 256
export const MIN_WORKLOAD_MEMORY = 4 * 1024 * 1024
const NAME_RULE = `lowercase letters, digits and dashes, at most ${MAX_WORKLOAD_NAME}, not starting or ending with a dash`
export const WorkloadName = z
  .string()
  .check(
    z.regex(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/, `must be ${NAME_RULE}`),
    z.maxLength(MAX_WORKLOAD_NAME, `must be ${NAME_RULE}`),
  )
export const ServiceName = z
  .string()
  .check(
    z.regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'must be a DNS label: lowercase letters, digits, dashes'),
  )
/** NAME:TAG, a CID, or (before a push) a local path; the artifacts subsystem resolves it. */
export const ArtifactRef = z
  .string()
  .check(z.minLength(1, 'must not be empty'), z.maxLength(200, 'must be at most 200 characters'))
export const Arch = z
  .string()
  .check(z.regex(/^[a-z0-9_]{1,16}$/, 'must be an architecture name such as amd64, arm64 or armv7'))
const noNulText = z.string().check(z.refine((s) => !s.includes('\0'), 'must not contain a NUL byte'))
export const Command = z
  .array(noNulText)
  .check(
    z.minLength(1, 'must name the program to run (after -- on the command line)'),
    z.maxLength(256, 'may have at most 256 arguments'),
  )
export const Env = z
  .record(
    z.string().check(z.regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'names must be letters, digits and underscores')),
    noNulText,
  )
  .check(z.refine((e) => Object.keys(e).length <= 128, 'may have at most 128 variables'))
export const WorkloadLabels = z
  .record(LabelKey, LabelValue)
  .check(z.refine((l) => Object.keys(l).length <= 16, 'may have at most 16 labels'))
export const Port = z
  .number()
  .check(
    z.int('must be a whole number'),
    z.minimum(1, 'must be 1 to 65535'),
    z.maximum(65535, 'must be 1 to 65535'),
  )
export const Replicas = z
  .number()
  .check(
    z.int('must be a whole number'),
    z.minimum(0, `must be 0 to ${MAX_REPLICAS}`),
    z.maximum(MAX_REPLICAS, `must be 0 to ${MAX_REPLICAS}`),
  )

/** A workload's health check (services/health.ts runs it); durations in ms. */
export const HealthValue = z.strictObject({
  kind: z.enum(['tcp', 'http', 'exec']),
  /** tcp and http: the container port probed. */
  port: z.optional(Port),
  /** http: the path GET asks for; 2xx and 3xx are healthy. */
  path: z.optional(z.string().check(z.regex(/^\/[\x21-\x7e]{0,255}$/, 'must be a path such as /healthz'))),
  /** exec: run in the container; exit 0 is healthy. */
  command: z.optional(Command),
  intervalMs: z.number().check(z.int(), z.minimum(100), z.maximum(3_600_000)),
  timeoutMs: z.number().check(z.int(), z.minimum(10), z.maximum(600_000)),
  /** Consecutive successes before an unhealthy replica serves again (and a new one serves at all). */
  healthyAfter: z.number().check(z.int(), z.minimum(1), z.maximum(100)),
  /** Consecutive failures before a replica leaves its service. */
  unhealthyAfter: z.number().check(z.int(), z.minimum(1), z.maximum(100)),
  /** Consecutive failures before the replica is made again; 0 = never. */
  restartAfter: z.number().check(z.int(), z.minimum(0), z.maximum(1000)),
})
export type HealthValue = z.infer<typeof HealthValue>

/** The stored form (the `workload/<name>` record value): units normalised, every field present. */
export const WorkloadValue = z.strictObject({
  name: WorkloadName,
  artifact: z.nullable(ArtifactRef),
  command: Command,
  replicas: Replicas,
  /** Millicores requested and allowed; 0 = no request, no limit. */
  cpu: z.number().check(z.int(), z.minimum(0), z.maximum(4_096_000)),
  /** Bytes requested and allowed. */
  memory: z.number().check(z.int(), z.minimum(MIN_WORKLOAD_MEMORY)),
  arch: z.nullable(Arch),
  /** Node labels a node must carry to run a replica. */
  labels: WorkloadLabels,
  ports: z.array(Port).check(z.maxLength(16)),
  service: z.nullable(ServiceName),
  /** Absent = no check (running is healthy); absent rather than null so older specs keep their hash. */
  health: z.optional(HealthValue),
  /** A service without a virtual IP: DNS answers the healthy replicas themselves. */
  headless: z.optional(z.literal(true)),
  restart: RestartPolicy,
  env: Env,
  exclusive: z.boolean(),
  /** `km1s stop`: kept, but no replica runs. */
  stopped: z.boolean(),
})
export type WorkloadValue = z.infer<typeof WorkloadValue>

export const ReplicaState = z.enum([
  'pending', // assigned here, not started yet (pulling the artifact, waiting for a rolling update's turn)
  'waiting', // cannot start: `reason` says why (no artifact subsystem, artifact missing)
  'creating',
  'running',
  'degraded', // a process is in back-off
  'exited',
  'failed',
  'stopping',
])
export type ReplicaState = z.infer<typeof ReplicaState>

/** `status/<peer>/<container>`: written only by the node that runs the container, deleted when it stops. */
export const StatusValue = z.strictObject({
  workload: z.string().check(z.maxLength(64)),
  /** The node's name. */
  node: z.string().check(z.maxLength(63)),
  state: ReplicaState,
  ip: z.nullable(z.string().check(z.maxLength(64))),
  restarts: z.number().check(z.int(), z.minimum(0)),
  reason: z.nullable(z.string().check(z.maxLength(500))),
  /** ms since the epoch when the container started; null until it did. */
  startedAt: z.nullable(z.number().check(z.int(), z.minimum(0))),
  index: z.number().check(z.int(), z.minimum(0)),
  /** specHash of the workload version it runs: rolling updates compare it. */
  spec: z.string().check(z.maxLength(64)),
  /** Health gate passed (always true until health checks exist). */
  healthy: z.boolean(),
})
export type StatusValue = z.infer<typeof StatusValue>

/** `tag/<name>:<tag>`: one root CID per arch (artifacts/ writes it; docs/artifacts.md). */
export const TagValue = z.strictObject({
  arches: z
    .record(
      z.string().check(z.regex(/^[a-z0-9]{1,16}$/)),
      z.strictObject({
        /** The root CID, CIDv1 in base32. */
        cid: z.string().check(z.regex(/^b[a-z2-7]{20,120}$/)),
        size: z.number().check(z.int(), z.minimum(0)),
        pushedAt: z.number().check(z.int(), z.minimum(0)),
      }),
    )
    .check(z.refine((a) => Object.keys(a).length <= 16, 'at most 16 arches')),
})
export type TagValue = z.infer<typeof TagValue>

// --- service/<name>: owned by services/ (docs/services.md) ---

/** The service range: one virtual IP per service. */
export const SERVICE_CIDR = '10.43.0.0/16'
/** `service/<name>`: the virtual IP and where its traffic goes. */
export const ServiceValue = z.strictObject({
  /** null for a headless service. */
  ip: z.nullable(
    z.string().check(z.regex(/^10\.43\.(25[0-5]|2[0-4]\d|1?\d?\d)\.(25[0-5]|2[0-4]\d|1?\d?\d)$/)),
  ),
  workload: WorkloadName,
  headless: z.boolean(),
  ports: z.array(Port).check(z.maxLength(16)),
  /** When the IP was first claimed (ms since the epoch): the earlier claim keeps an IP two services hold. */
  claimedAt: z.number().check(z.int(), z.minimum(0)),
})
export type ServiceValue = z.infer<typeof ServiceValue>

export const VALUE_SCHEMAS: { readonly [K in KeyKind]: z.ZodMiniType } = {
  node: NodeValue,
  status: StatusValue,
  label: z.record(LabelKey, LabelValue).check(z.refine((labels) => Object.keys(labels).length <= 64)),
  workload: WorkloadValue,
  service: ServiceValue,
  tag: TagValue,
  // network/subnet.ts has the same schema (SubnetClaimValue); state cannot import network.
  subnet: z.strictObject({
    peer: z.string().check(z.regex(/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/)),
    claimedAt: z.number().check(z.int(), z.minimum(0)),
  }),
}

function depthWithin(value: unknown, limit: number): boolean {
  if (limit < 0) return false
  if (Array.isArray(value)) return value.every((v) => depthWithin(v, limit - 1))
  if (value !== null && typeof value === 'object')
    return Object.values(value).every((v) => depthWithin(v, limit - 1))
  return true
}

function canonical(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw badValue('a number that is not finite')
    return JSON.stringify(value)
  }
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value)
    if (proto !== Object.prototype && proto !== null) throw badValue('an object that is not plain JSON')
    const entries = Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
    return `{${entries.join(',')}}`
  }
  throw badValue(`a ${typeof value}`)
}

const badValue = (what: string) =>
  new Km1sError('ERR_STATE_VALUE', `A record value must be plain JSON, but it contains ${what}.`)

/** JSON with object keys sorted: one byte string per value, whatever order the keys arrived in. */
export function canonicalJson(value: unknown): string {
  if (!depthWithin(value, MAX_VALUE_DEPTH))
    throw new Km1sError('ERR_STATE_VALUE', `A record value may nest at most ${MAX_VALUE_DEPTH} levels deep.`)
  return canonical(value)
}

/** The bytes the author signs: every field but the signature, in a fixed order, under a domain tag. */
export function signingBytes(r: UnsignedRecord): Uint8Array {
  const text = [
    SIGNING_DOMAIN,
    JSON.stringify(r.key),
    encodeHlc(r.hlc),
    JSON.stringify(r.author),
    r.deleted ? 'deleted' : 'live',
    canonicalJson(r.value),
  ].join('\n')
  return new TextEncoder().encode(text)
}

// The wire form: JSON, the clock in its sortable string form, the signature in base64url.
export const WireRecord = z.strictObject({
  v: z.literal(1),
  key: z.string().check(z.minLength(1)),
  value: z.unknown(),
  hlc: z.string().check(z.regex(/^[0-9a-f]{12}\.[0-9a-f]{6}$/)),
  author: z.string().check(z.regex(/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/)),
  sig: z.string().check(z.regex(/^[A-Za-z0-9_-]{86}$/)),
  deleted: z.boolean(),
})
export type WireRecord = z.infer<typeof WireRecord>

export function toWire(r: SignedRecord): WireRecord {
  return {
    v: 1,
    key: r.key,
    value: r.value,
    hlc: encodeHlc(r.hlc),
    author: r.author,
    sig: Buffer.from(r.sig).toString('base64url'),
    deleted: r.deleted,
  }
}

export function encodeRecord(r: SignedRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(toWire(r)))
}

export type Decoded = { ok: true; record: SignedRecord } | { ok: false; reason: 'oversized' | 'malformed' }

/** Parses one record from wire JSON (already parsed, e.g. inside a batch) without trusting any of it. */
export function fromWire(input: unknown): Decoded {
  const parsed = WireRecord.safeParse(input)
  if (!parsed.success) return { ok: false, reason: 'malformed' }
  const w = parsed.data
  const hlc = decodeHlc(w.hlc)
  const sig = new Uint8Array(Buffer.from(w.sig, 'base64url'))
  if (!hlc || sig.length !== SIG_BYTES) return { ok: false, reason: 'malformed' }
  const value = (w.value ?? null) as JsonValue
  return { ok: true, record: { key: w.key, value, hlc, author: w.author, sig, deleted: w.deleted } }
}

/** Parses one record from wire bytes; the size limit is checked before any parsing. */
export function decodeRecord(bytes: Uint8Array, maxBytes = MAX_RECORD_BYTES): Decoded {
  if (bytes.length > maxBytes) return { ok: false, reason: 'oversized' }
  let json: unknown
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch {
    return { ok: false, reason: 'malformed' }
  }
  return fromWire(json)
}

export type CheckOptions = { maxDriftMs?: number; maxRecordBytes?: number }

/** Every check but the signature, cheapest first; for local writes and as the first half of validateIncoming. */
export function checkRecord(r: SignedRecord, now: number, opts: CheckOptions = {}): Verdict {
  if (Buffer.byteLength(r.key, 'utf8') > MAX_KEY_BYTES) return { ok: false, reason: 'oversized' }
  const parsed = parseKey(r.key)
  if (!parsed) return { ok: false, reason: 'unknown-key' }
  if (!mayWrite(r.key, r.author, r.deleted)) return { ok: false, reason: 'forged-owner' }
  if (!isValidHlc(r.hlc)) return { ok: false, reason: 'malformed' }
  if (r.hlc.wall > now + (opts.maxDriftMs ?? MAX_DRIFT_MS)) return { ok: false, reason: 'clock-drift' }
  if (r.deleted) {
    if (r.value !== null) return { ok: false, reason: 'invalid-value' }
  } else {
    try {
      canonicalJson(r.value)
    } catch {
      return { ok: false, reason: 'invalid-value' }
    }
    if (!VALUE_SCHEMAS[parsed.kind].safeParse(r.value).success) return { ok: false, reason: 'invalid-value' }
  }
  if (encodeRecord(r).length > (opts.maxRecordBytes ?? MAX_RECORD_BYTES))
    return { ok: false, reason: 'oversized' }
  return { ok: true }
}
