// The typed client of the control API; the CLI, the tests and the benchmarks talk to agents only through it.
import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import { type PassThrough, Writable } from 'node:stream'
import { Km1sError } from '../common/errors.ts'
import { http } from '../common/http.ts'
import type { ContainerSpecInput } from '../runtime/types.ts'
import type { WorkloadValue } from '../state/record.ts'
import { execOutput } from './exec-output.ts'
import {
  ApiError,
  type ExecRequestView,
  encodeChunked,
  encodeFrame,
  encodeJsonFrame,
  Frame,
  FrameDecoder,
  type RequestInputOf,
  type ResponseOf,
  type RouteName,
  routes,
  type StreamItemOf,
  type StreamName,
  type StreamRequestOf,
  streams,
  UPGRADE_REQUEST_HEADER,
  upgrades,
} from './schemas.ts'

function isConnectionCut(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException
  return e?.code === 'ECONNRESET' || e?.message === 'aborted' || e?.code === 'ERR_STREAM_PREMATURE_CLOSE'
}

/** A query string of the fields that are set (URLSearchParams would send `undefined` as text). */
function queryOf(body: object): string {
  const fields = Object.entries(body).filter(([, v]) => v !== undefined)
  return new URLSearchParams(fields.map(([k, v]): [string, string] => [k, String(v)])).toString()
}

/** The client's end of an exec session (`ApiClient.exec`). */
export interface ExecChannel {
  /** The program's input: each write becomes stdin frames, end() the stdin-eof frame. */
  stdin: Writable
  stdout: PassThrough
  /** Nothing comes here with a terminal: the program's stderr is the terminal. */
  stderr: PassThrough
  resize(cols: number, rows: number): void
  /** Leaves the session: the agent kills the program. */
  close(): void
  /**
   * The program's exit, after all its output was handed to stdout and stderr (which then end). Rejects with
   * the agent's error frame as a Km1sError, or ERR_EXEC_LOST when the connection ends without a status.
   */
  exited: Promise<{ code: number | null; signal: string | null }>
}

export type ExecOptions = Omit<ExecRequestView, 'env'> & { env?: Record<string, string> }

export class ApiClient {
  readonly socket: string
  readonly timeoutMs: number

  constructor(socket: string, opts: { timeoutMs?: number } = {}) {
    this.socket = socket
    this.timeoutMs = opts.timeoutMs ?? 10_000
  }

  health() {
    return this.call('health', {})
  }

  nodes() {
    return this.call('nodes', {})
  }

  status() {
    return this.call('status', {})
  }

  label(node: string, set: Record<string, string>, remove: string[] = []) {
    return this.call('label', { node, set, remove })
  }

  forget(node: string) {
    return this.call('forget', { node })
  }

  watch(prefix: string, signal: AbortSignal) {
    return this.stream('watch', { prefix }, signal)
  }

  containers() {
    return this.call('containers', {})
  }

  /** Every node's containers, one node's (`node`: its name or id), or where `container` runs. */
  clusterContainers(query: { node?: string; container?: string } = {}) {
    return this.call('clusterContainers', query)
  }

  createContainer(spec: ContainerSpecInput) {
    return this.call('containerCreate', spec)
  }

  removeContainer(name: string) {
    return this.call('containerRemove', { name })
  }

  workloads() {
    return this.call('workloads', {})
  }

  /** Creates or replaces a workload (`km1s run`, `km1s apply`); on disk before it answers. */
  putWorkload(workload: WorkloadValue) {
    return this.call('workloadPut', workload)
  }

  scaleWorkload(name: string, replicas: number) {
    return this.call('workloadScale', { name, replicas })
  }

  stopWorkload(name: string) {
    return this.call('workloadStop', { name })
  }

  removeWorkload(name: string) {
    return this.call('workloadRemove', { name })
  }

  /** Replicas the local scheduler could place nowhere, with why. */
  unplaced() {
    return this.call('unplaced', {})
  }

  /** Every service: virtual IP, ports, healthy and total replicas. */
  services() {
    return this.call('services', {})
  }

  /** Every replica of every workload, cluster-wide, from the status records. */
  ps() {
    return this.call('ps', {})
  }

  logs(query: StreamRequestOf<'logs'>, signal: AbortSignal) {
    return this.stream('logs', query, signal)
  }

  artifacts() {
    return this.call('artifacts', {})
  }

  artifactsStatus() {
    return this.call('artifactsStatus', {})
  }

  removeArtifact(ref: string, arch?: string) {
    return this.call('artifactRemove', { ref, arch })
  }

  gcArtifacts() {
    return this.call('artifactGc', {})
  }

  /** Progress events, then one `done` (with the result) or one `error` event. */
  push(request: StreamRequestOf<'push'>, signal: AbortSignal) {
    return this.stream('push', request, signal)
  }

  pull(request: StreamRequestOf<'pull'>, signal: AbortSignal) {
    return this.stream('pull', request, signal)
  }

  /** Starts an exec session: resolves once the agent switched protocols, or rejects with its error. */
  exec(request: ExecOptions): Promise<ExecChannel> {
    const route = upgrades.exec
    const encoded = Buffer.from(JSON.stringify(request), 'utf8').toString('base64url')
    return new Promise<ExecChannel>((resolve, reject) => {
      const req = http.request({
        socketPath: this.socket,
        path: route.path,
        method: route.method,
        headers: { connection: 'Upgrade', upgrade: route.protocol, [UPGRADE_REQUEST_HEADER]: encoded },
        timeout: this.timeoutMs,
      })
      req.on('upgrade', (_res, socket: Socket, head: Buffer) => resolve(execChannel(socket, head)))
      req.on('response', (res: IncomingMessage) => {
        readError(res).then(reject, reject)
      })
      req.on('timeout', () =>
        req.destroy(
          new Km1sError(
            'ERR_AGENT_TIMEOUT',
            `The km1s agent at ${this.socket} did not start the exec within ${this.timeoutMs / 1000} s; check it with 'km1s status' or its logs.`,
          ),
        ),
      )
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.#connectionError(err)))
      req.end()
    })
  }

  /** A streaming route: items as they come, until `signal` aborts or the agent ends the stream. */
  async *stream<S extends StreamName>(
    name: S,
    body: StreamRequestOf<S>,
    signal: AbortSignal,
  ): AsyncGenerator<StreamItemOf<S>> {
    const route = streams[name]
    const query = queryOf(body)
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = http.request(
        { socketPath: this.socket, path: `${route.path}?${query}`, method: route.method, signal },
        resolve,
      )
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.#connectionError(err)))
      req.end()
    })
    if (res.statusCode !== 200) throw await readError(res)
    let buffered = ''
    try {
      for await (const chunk of res) {
        buffered += (chunk as Buffer).toString('utf8')
        let nl = buffered.indexOf('\n')
        while (nl >= 0) {
          const line = buffered.slice(0, nl)
          buffered = buffered.slice(nl + 1)
          const item = route.item.safeParse(JSON.parse(line))
          if (item.success) yield item.data as StreamItemOf<S>
          nl = buffered.indexOf('\n')
        }
      }
    } catch (err) {
      if (signal.aborted) return
      // NDJSON has no error item: an agent whose source failed mid-stream (a follow proxied from a node
      // that went away) can only cut the connection.
      if (isConnectionCut(err))
        throw new Km1sError(
          'ERR_STREAM_LOST',
          "The agent ended the stream before its end (it stopped, or the node it was following went away); check 'km1s nodes' and try again.",
          { cause: err },
        )
      throw err
    }
  }

  #connectionError(err: NodeJS.ErrnoException): Error {
    if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
      return new Km1sError(
        'ERR_AGENT_NOT_RUNNING',
        `No km1s agent is running at ${this.socket}; start one with 'km1s agent' (or 'km1s up'), or pass --socket.`,
        { cause: err },
      )
    }
    if (err.code === 'EACCES') {
      return new Km1sError(
        'ERR_PERMISSION',
        `Permission denied on ${this.socket}; run as root or as a member of group km1s.`,
        {
          cause: err,
        },
      )
    }
    return err
  }

  async call<R extends RouteName>(name: R, body: RequestInputOf<R>): Promise<ResponseOf<R>> {
    const route = routes[name]
    const query = route.method === 'GET' ? queryOf(body) : ''
    const path = query ? `${route.path}?${query}` : route.path
    const payload = route.method === 'GET' ? undefined : JSON.stringify(body)
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socket,
          path,
          method: route.method,
          headers: payload ? { 'content-type': 'application/json' } : {},
          timeout: this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = []
          res.on('data', (c: Buffer) => chunks.push(c))
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
          )
          res.on('error', reject)
        },
      )
      req.on('timeout', () =>
        req.destroy(
          new Km1sError(
            'ERR_AGENT_TIMEOUT',
            `The km1s agent at ${this.socket} did not answer within ${this.timeoutMs / 1000} s; check it with 'km1s status' or its logs.`,
          ),
        ),
      )
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(
            new Km1sError(
              'ERR_AGENT_NOT_RUNNING',
              `No km1s agent is running at ${this.socket}; start one with 'km1s agent' (or 'km1s up'), or pass --socket.`,
              { cause: err },
            ),
          )
        } else if (err.code === 'EACCES') {
          reject(
            new Km1sError(
              'ERR_PERMISSION',
              `Permission denied on ${this.socket}; run as root or as a member of group km1s.`,
              { cause: err },
            ),
          )
        } else reject(err)
      })
      if (payload) req.write(payload)
      req.end()
    })
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      throw new Km1sError('ERR_BAD_RESPONSE', `The agent sent a response that is not JSON (HTTP ${status}).`)
    }
    if (status !== 200) {
      const err = ApiError.safeParse(json)
      if (err.success) throw new Km1sError(err.data.error.code, err.data.error.message)
      throw new Km1sError('ERR_BAD_RESPONSE', `The agent answered HTTP ${status} without an error message.`)
    }
    const parsed = route.response.safeParse(json)
    if (!parsed.success) {
      throw new Km1sError(
        'ERR_BAD_RESPONSE',
        `The agent's answer to ${name} does not match this CLI's version; run the same km1s version on both.`,
      )
    }
    return parsed.data as ResponseOf<R>
  }
}

/** A non-200 answer as the agent's Km1sError. */
async function readError(res: IncomingMessage): Promise<Km1sError> {
  const chunks: Buffer[] = []
  for await (const c of res) chunks.push(c as Buffer)
  let json: unknown
  try {
    json = JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {}
  const err = ApiError.safeParse(json)
  return err.success
    ? new Km1sError(err.data.error.code, err.data.error.message)
    : new Km1sError('ERR_BAD_RESPONSE', `The agent answered HTTP ${res.statusCode} without an error message.`)
}

function execChannel(socket: Socket, head: Buffer): ExecChannel {
  socket.setTimeout(0)
  socket.setNoDelay?.(true)
  const decoder = new FrameDecoder()
  const out = execOutput({
    who: 'The agent',
    pause: () => socket.pause(),
    resume: () => socket.resume(),
    close: () => socket.end(),
  })
  const onData = (chunk: Buffer) => {
    if (out.settled) return
    let frames: ReturnType<FrameDecoder['push']>
    try {
      frames = decoder.push(chunk)
    } catch {
      return out.bad('a frame larger than the limit')
    }
    for (const f of frames) {
      out.frame(f.type, f.payload)
      if (out.settled) return
    }
  }
  socket.on('data', onData)
  socket.on('error', () => {})
  socket.once('close', () =>
    out.end(
      new Km1sError(
        'ERR_EXEC_LOST',
        "The connection to the agent ended before the command's exit status arrived; check the agent's log.",
      ),
    ),
  )
  const send = (frame: Buffer, cb?: (err?: Error | null) => void) => {
    if (out.settled || socket.destroyed) return void cb?.()
    socket.write(frame, () => cb?.())
  }
  const stdin = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const frames = encodeChunked(Frame.stdin, chunk)
      if (frames.length === 0) return cb()
      for (const [i, frame] of frames.entries()) send(frame, i === frames.length - 1 ? cb : undefined)
    },
    final(cb) {
      send(encodeFrame(Frame.stdinEof), cb)
    },
  })
  if (head.length > 0) onData(head)
  return {
    stdin,
    stdout: out.stdout,
    stderr: out.stderr,
    resize: (cols, rows) => send(encodeJsonFrame(Frame.resize, { cols, rows })),
    close: () => socket.destroy(),
    exited: out.exited,
  }
}
