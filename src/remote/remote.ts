// Logs and exec of a container on another node, over /km1s/remote/1.0.0: one libp2p stream per request.
// Serving: this node's runtime answers peers' requests. Asking: find the node that runs a container
// (status records, what this node saw last, then every live peer), then proxy the request there.

import type { Libp2p, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { ContainerStatusView, type DecodedFrame, LogEntryView, ResizeFrame } from '../api/schemas.ts'
import type { ExecSession } from '../api/server.ts'
import { errorMessage, isKm1sError, Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import type { Member } from '../membership/index.ts'
import { startExec } from '../runtime/exec.ts'
import type { ContainerStatus, LogEntry, Runtime } from '../runtime/types.ts'
import { FrameChannel } from './channel.ts'
import {
  decodeRequest,
  ERR_NOT_HERE,
  type ExecOp,
  jsonOf,
  type ListOp,
  type LogsOp,
  REMOTE_PROTOCOL,
  RemoteError,
  RemoteFrame,
  type RemoteRequest,
} from './protocol.ts'
import { execSession, itemsOf } from './session.ts'

export interface RemoteInit {
  libp2p: Pick<Libp2p, 'handle' | 'unhandle' | 'dialProtocol'>
  /** This node's peer id. */
  self: string
  /** This node's runtime, or undefined when it runs none (it then answers that it has no containers). */
  runtime: Runtime | undefined
  /** Keys `status/<peer>/<container>` of the store: which node says it runs a container. */
  statusKeys: () => string[]
  /** The cluster as this node sees it (membership). */
  members: () => Member[]
  logger: Logger
  /** Opening a stream and getting the first answer (default 5 s). */
  openTimeoutMs?: number
  /** A `list` asked of every live peer while locating (default 3 s). */
  listTimeoutMs?: number
}

export interface RemoteStats {
  /** Requests served to peers. */
  served: number
  /** Requests this node sent to peers. */
  asked: number
  /** Streams ended because a peer sent garbage: a bad or oversized frame, an invalid request. */
  badFrames: number
  /** Requests to peers that failed to open (unreachable, timed out). */
  failures: number
  /** Streams open now, both directions. */
  open: number
}

/** One node's containers for `km1s containers --all`; `error` when it could not be asked. */
export interface NodeContainers {
  node: string
  id: string
  containers: ContainerStatus[]
  error: string | null
}

/** The request phase: the first frame must come soon (a stream that never asks is reset). */
const REQUEST_TIMEOUT_MS = 10_000
/** What a `list` answer may hold. */
const MAX_LIST_ITEMS = 10_000
/** Where containers were last seen, for the error that names a node which went away. */
const LAST_SEEN_ENTRIES = 4096

type Frame = DecodedFrame

export class Remote {
  readonly #init: RemoteInit
  readonly #log: Logger
  readonly #ac = new AbortController()
  readonly #streams = new Set<FrameChannel>()
  readonly #lastSeen = new Map<string, string>()
  readonly #stats = { served: 0, asked: 0, badFrames: 0, failures: 0 }
  #started = false

  constructor(init: RemoteInit) {
    this.#init = init
    this.#log = init.logger.child({ subsystem: 'remote' })
  }

  async start(): Promise<void> {
    if (this.#started) return
    this.#started = true
    await this.#init.libp2p.handle(REMOTE_PROTOCOL, (stream) => this.#serve(stream), {
      maxInboundStreams: 64,
      maxOutboundStreams: 64,
    })
  }

  /** Unregisters the protocol and resets every open stream (their programs and followers end). */
  async stop(): Promise<void> {
    if (!this.#started) return
    this.#started = false
    this.#ac.abort()
    for (const ch of this.#streams) ch.abort('the agent is stopping')
    try {
      await this.#init.libp2p.unhandle(REMOTE_PROTOCOL)
    } catch {
      // libp2p may already be stopping
    }
  }

  stats(): RemoteStats {
    return { ...this.#stats, open: this.#streams.size }
  }

  // --- asking: the local agent's handlers call these for a container that is not on this node ---

  /** Log entries of a container on another node; rejects before any entry when it cannot be had. */
  logs(req: Omit<LogsOp, 'op'>, signal: AbortSignal): Promise<AsyncIterable<LogEntry>> {
    return this.#onTheNode(req.container, { op: 'logs', ...req }, (ch) => itemsOf(ch, LogEntryView, signal))
  }

  /** An exec session in a container on another node, as the API's exec upgrade relays it. */
  exec(req: Omit<ExecOp, 'op'>): Promise<ExecSession> {
    return this.#onTheNode(req.container, { op: 'exec', ...req }, (ch, node) =>
      execSession(ch, node, req.tty),
    )
  }

  /** The node that runs `container` and its status there (a `where`: a `list` with the name). */
  async locate(container: string): Promise<NodeContainers> {
    const found = await this.#onTheNode(container, { op: 'list', container }, async (ch, node, id) => {
      const signal = AbortSignal.timeout(this.#init.listTimeoutMs ?? 3_000)
      const containers: ContainerStatus[] = []
      for await (const c of itemsOf(ch, ContainerStatusView, signal)) containers.push(c)
      return { node, id, containers, error: null }
    })
    return found
  }

  /** Every node's containers (or only the node `only`, a member), dead nodes with an error. */
  async containers(only?: Member): Promise<NodeContainers[]> {
    const members = only ? [only] : this.#init.members()
    return Promise.all(
      members.map(async (m): Promise<NodeContainers> => {
        const base = { node: m.info.name, id: m.id }
        if (m.self) return { ...base, containers: this.#init.runtime?.list() ?? [], error: null }
        if (m.state === 'dead')
          return { ...base, containers: [], error: `${m.info.name} is dead (not heard from)` }
        try {
          return { ...base, containers: await this.#list(m.id, {}), error: null }
        } catch (err) {
          return { ...base, containers: [], error: errorMessage(err) }
        }
      }),
    )
  }

  /**
   * Opens `request` on the node that runs `container`: first the nodes that status records name or
   * where this node last saw it, then every other live peer at once (a `list` with the name). The first
   * that accepts is used. Errors: one sentence naming the node that could not be reached, or not found.
   */
  async #onTheNode<T>(
    container: string,
    request: RemoteRequest,
    use: (ch: FrameChannel, node: string, id: string) => T,
  ): Promise<T> {
    const members = new Map(this.#init.members().map((m) => [m.id, m]))
    const name = (id: string) => members.get(id)?.info.name ?? id
    const unreachable: Array<{ id: string; why: string }> = []
    const asked = new Set<string>([this.#init.self])
    const attempt = async (id: string): Promise<T | undefined> => {
      asked.add(id)
      const m = members.get(id)
      if (m?.state === 'dead') {
        unreachable.push({ id, why: 'it is dead: not heard from' })
        return undefined
      }
      try {
        const ch = await this.#open(id, request)
        this.#remember(container, id)
        return use(ch, name(id), id)
      } catch (err) {
        if (isKm1sError(err) && err.code === ERR_NOT_HERE) return undefined
        if (
          isKm1sError(err) &&
          !['ERR_REMOTE_LOST', 'ERR_REMOTE_TIMEOUT', 'ERR_BAD_FRAME'].includes(err.code)
        )
          throw err
        unreachable.push({ id, why: errorMessage(err).replace(/\.$/, '') })
        return undefined
      }
    }
    for (const id of this.#candidates(container)) {
      if (asked.has(id)) continue
      const got = await attempt(id)
      if (got !== undefined) return got
    }
    const rest = [...members.values()].filter((m) => !asked.has(m.id) && m.state !== 'dead')
    const found = await Promise.all(
      rest.map(async (m) => {
        try {
          return (await this.#list(m.id, { container })).length > 0 ? m.id : undefined
        } catch (err) {
          if (isKm1sError(err) && err.code === ERR_NOT_HERE) return undefined
          unreachable.push({ id: m.id, why: errorMessage(err).replace(/\.$/, '') })
          return undefined
        }
      }),
    )
    for (const id of found) {
      if (id === undefined) continue
      const got = await attempt(id)
      if (got !== undefined) return got
    }
    const seen = unreachable.find((u) => this.#candidates(container).includes(u.id))
    if (seen)
      throw new Km1sError(
        'ERR_NODE_UNREACHABLE',
        `Container ${container} is on node ${name(seen.id)}, which cannot be reached from here (${seen.why}); check 'km1s nodes'.`,
      )
    const others = unreachable.map((u) => name(u.id))
    throw new Km1sError(
      'ERR_NOT_FOUND',
      `There is no container named ${container} on any node${others.length > 0 ? ` this node reached (not ${others.join(', ')})` : ''}; 'km1s containers --all' lists them.`,
    )
  }

  /** Nodes that status records say run `container`, then where it was last seen. */
  #candidates(container: string): string[] {
    const ids: string[] = []
    for (const key of this.#init.statusKeys()) {
      const parts = key.split('/')
      if (parts.length === 3 && parts[2] === container && parts[1]) ids.push(parts[1])
    }
    const seen = this.#lastSeen.get(container)
    if (seen !== undefined && !ids.includes(seen)) ids.push(seen)
    return ids.filter((id) => id !== this.#init.self)
  }

  #remember(container: string, id: string): void {
    this.#lastSeen.delete(container)
    this.#lastSeen.set(container, id)
    if (this.#lastSeen.size > LAST_SEEN_ENTRIES) {
      const oldest = this.#lastSeen.keys().next().value
      if (oldest !== undefined) this.#lastSeen.delete(oldest)
    }
  }

  async #list(id: string, req: Omit<ListOp, 'op'>): Promise<ContainerStatus[]> {
    const ch = await this.#open(id, { op: 'list', ...req }, this.#init.listTimeoutMs ?? 3_000)
    const out: ContainerStatus[] = []
    const signal = AbortSignal.timeout(this.#init.listTimeoutMs ?? 3_000)
    for await (const c of itemsOf(ch, ContainerStatusView, signal)) {
      if (out.length >= MAX_LIST_ITEMS) break
      out.push(c)
      this.#remember(c.name, id)
    }
    return out
  }

  /** A stream to `id` with `request` sent and accepted; rejects with the peer's error or ERR_REMOTE_*. */
  async #open(
    id: string,
    request: RemoteRequest,
    timeoutMs = this.#init.openTimeoutMs ?? 5_000,
  ): Promise<FrameChannel> {
    this.#stats.asked++
    let stream: Stream
    try {
      stream = await this.#init.libp2p.dialProtocol(peerIdFromString(id), REMOTE_PROTOCOL, {
        signal: AbortSignal.any([this.#ac.signal, AbortSignal.timeout(timeoutMs)]),
      })
    } catch (err) {
      this.#stats.failures++
      throw new Km1sError('ERR_REMOTE_LOST', `the connection failed: ${dialReason(err)}`, { cause: err })
    }
    const ch = this.#track(new FrameChannel(stream))
    ch.sendJson(RemoteFrame.request, request)
    let first: Frame
    try {
      first = await ch.next(timeoutMs, 'answer')
    } catch (err) {
      this.#stats.failures++
      ch.abort('no answer')
      throw err
    }
    if (first.type === RemoteFrame.ready) return ch
    ch.abort('refused')
    const e = first.type === RemoteFrame.error ? RemoteError.safeParse(jsonOf(first.payload)) : undefined
    if (e?.success) throw new Km1sError(e.data.code, e.data.message)
    throw new Km1sError('ERR_BAD_FRAME', `the node answered with a frame of type ${first.type}`)
  }

  #track(ch: FrameChannel): FrameChannel {
    this.#streams.add(ch)
    ch.stream.addEventListener('close', () => this.#streams.delete(ch), { once: true })
    return ch
  }

  // --- serving: a peer's request for a container on this node ---

  async #serve(stream: Stream): Promise<void> {
    const ch = this.#track(new FrameChannel(stream))
    let request: RemoteRequest
    try {
      const first = await ch.next(REQUEST_TIMEOUT_MS, 'request')
      request = decodeRequest(first.type, first.payload)
    } catch (err) {
      if (isKm1sError(err) && (err.code === 'ERR_BAD_FRAME' || err.code === 'ERR_REMOTE_TIMEOUT')) {
        this.#stats.badFrames++
        this.#log.warn({ err: err.message }, 'a remote request was refused')
        return refuse(ch, err)
      }
      return void ch.abort('no request')
    }
    this.#stats.served++
    try {
      if (request.op === 'list') return this.#serveList(ch, request)
      if (request.op === 'logs') return await this.#serveLogs(ch, request)
      return await this.#serveExec(ch, request)
    } catch (err) {
      if (!isKm1sError(err))
        this.#log.warn({ err: errorMessage(err), op: request.op }, 'remote request failed')
      refuse(ch, err)
    }
  }

  #container(name: string, process?: string): { runtime: Runtime; status: ContainerStatus } {
    const runtime = this.#init.runtime
    const status = runtime?.get(name)
    if (!runtime || !status) throw new Km1sError(ERR_NOT_HERE, `There is no container named ${name} here.`)
    if (process !== undefined && !status.processes.some((p) => p.name === process))
      throw new Km1sError(
        'ERR_NOT_FOUND',
        `Container ${name} has no process named ${process}; it has ${status.processes.map((p) => p.name).join(', ')}.`,
      )
    return { runtime, status }
  }

  #serveList(ch: FrameChannel, req: ListOp): void {
    const all = this.#init.runtime?.list() ?? []
    if (req.container !== undefined) this.#container(req.container)
    ch.send(RemoteFrame.ready)
    for (const c of all)
      if (req.container === undefined || c.name === req.container) ch.sendJson(RemoteFrame.item, c)
    ch.send(RemoteFrame.end)
    ch.close()
  }

  async #serveLogs(ch: FrameChannel, req: LogsOp): Promise<void> {
    const { runtime } = this.#container(req.container, req.process)
    const gone = new AbortController()
    let refused = false
    const garbage = (err: Km1sError) => {
      if (refused) return
      refused = true
      this.#stats.badFrames++
      gone.abort()
      refuse(ch, err)
    }
    // A client sends nothing after its request: any frame is garbage, its end of file means it left.
    ch.onEnd((end) => (end.kind === 'garbage' ? garbage(end.error) : gone.abort()))
    const { op: _op, container, ...query } = req
    const entries = runtime.logs(container, {
      ...query,
      signal: AbortSignal.any([gone.signal, this.#ac.signal]),
    })
    ch.send(RemoteFrame.ready)
    ch.onFrame((f) =>
      garbage(
        new Km1sError(
          'ERR_BAD_FRAME',
          `A logs stream takes no frames after the request (got type ${f.type}).`,
        ),
      ),
    )
    try {
      for await (const e of entries) {
        if (gone.signal.aborted) break
        if (!ch.sendJson(RemoteFrame.item, e)) await ch.drained()
      }
    } catch (err) {
      if (!gone.signal.aborted) throw err
    }
    if (refused) return
    if (gone.signal.aborted) return void ch.abort('gone')
    ch.send(RemoteFrame.end)
    ch.close()
  }

  /** The API server's exec relay (server.ts `#serveExec`), with the libp2p stream for the socket. */
  async #serveExec(ch: FrameChannel, req: ExecOp): Promise<void> {
    const { runtime } = this.#container(req.container, req.process)
    const { op: _op, cols, rows, ...request } = req
    const prepared = await runtime.prepareExec(request)
    if (ch.ended) return void (await prepared.cleanup().catch(() => {}))
    const s = startExec(prepared, { tty: req.tty, cols, rows, log: this.#log.child({ exec: req.container }) })
    ch.send(RemoteFrame.ready)
    let over = false
    let stdinOpen = true
    let stdinFull = false
    const finish = (type: number, value: unknown) => {
      if (over) return
      over = true
      ch.sendJson(type, value)
      ch.close()
    }
    const fail = (message: string) => {
      if (over) return
      this.#stats.badFrames++
      this.#log.warn({ message }, 'remote exec ended by a bad frame')
      finish(RemoteFrame.error, { code: 'ERR_BAD_FRAME', message })
      s.kill('SIGKILL')
    }
    s.stdin.on('error', () => {})
    ch.onFrame((f) => {
      if (over) return
      if (f.type === RemoteFrame.stdin && stdinOpen) {
        if (!s.stdin.write(f.payload) && !stdinFull) {
          stdinFull = true
          ch.pause()
          s.stdin.once('drain', () => {
            stdinFull = false
            if (!ch.ended) ch.resume()
          })
        }
      } else if (f.type === RemoteFrame.stdinEof && stdinOpen) {
        stdinOpen = false
        s.stdin.end()
      } else if (f.type === RemoteFrame.resize) {
        const size = ResizeFrame.safeParse(jsonOf(f.payload))
        if (!size.success)
          return fail('A resize frame must hold JSON { cols, rows } of whole numbers 1–65535.')
        s.resize(size.data.cols, size.data.rows)
      } else if (f.type === RemoteFrame.stdin || f.type === RemoteFrame.stdinEof) {
        fail('The client sent stdin after stdin-eof.')
      } else fail(`Frame type ${f.type} is not one a client sends (1 stdin, 2 stdin-eof, 3 resize).`)
    })
    // The asking node went away (or sent garbage): nobody will see the output or status.
    ch.onEnd((end) => {
      if (over) return
      over = true
      s.kill('SIGKILL')
      s.stdout.destroy()
      s.stderr?.destroy()
      if (end.kind !== 'garbage') return void ch.abort('the asking node left')
      this.#stats.badFrames++
      this.#log.warn({ err: end.error.message }, 'remote exec ended by a bad frame')
      refuse(ch, end.error)
    })
    const relay = (out: NodeJS.ReadableStream | null, type: number) =>
      new Promise<void>((resolve) => {
        if (!out) return resolve()
        out.on('data', (chunk: Buffer) => {
          if (over) return
          if (!ch.send(type, chunk)) {
            out.pause()
            ch.drained().then(
              () => out.resume(),
              () => {},
            )
          }
        })
        out.once('end', resolve)
        out.once('close', resolve)
        out.once('error', resolve)
      })
    Promise.all([s.exited, relay(s.stdout, RemoteFrame.stdout), relay(s.stderr, RemoteFrame.stderr)]).then(
      ([exit]) => finish(RemoteFrame.exit, exit),
      (err) =>
        finish(
          RemoteFrame.error,
          isKm1sError(err)
            ? { code: err.code, message: err.message }
            : { code: 'ERR_INTERNAL', message: `The agent failed: ${errorMessage(err)}` },
        ),
    )
  }
}

/** An error answer, then our end closed: used before `ready` and for garbage. */
function refuse(ch: FrameChannel, err: unknown): void {
  if (ch.stream.writeStatus === 'writable') {
    ch.sendJson(
      RemoteFrame.error,
      isKm1sError(err)
        ? { code: err.code, message: err.message }
        : { code: 'ERR_INTERNAL', message: `The agent failed: ${errorMessage(err)}` },
    )
    ch.close()
  } else ch.abort('refused')
}

function dialReason(err: unknown): string {
  const e = err as { name?: string; message?: string; errors?: unknown[] }
  if (e?.name === 'AbortError' || e?.name === 'TimeoutError') return 'no answer in time'
  const inner = Array.isArray(e?.errors) && e.errors.length > 0 ? (e.errors[0] as Error) : undefined
  const msg = errorMessage(inner ?? err)
  if (/ECONNREFUSED/.test(msg)) return 'connection refused: its agent is not running'
  if (/EHOSTUNREACH|ENETUNREACH/.test(msg)) return 'no route to it'
  if (/no valid addresses|NoValidAddresses/i.test(msg + (e?.name ?? ''))) return 'no known address'
  return msg.replace(/\.$/, '')
}
