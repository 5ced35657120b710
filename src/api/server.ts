// The control API server: HTTP over a Unix socket (mode 0660, group km1s when it exists), a handler
// table keyed by route, every request validated against its schema, errors as { error: { code, message } }.
// Exec is an HTTP Upgrade on the same socket, then length-prefixed frames both ways (schemas.ts).
import { chmod, chown, unlink } from 'node:fs/promises'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Readable, Writable } from 'node:stream'
import { errorMessage, isKm1sError, Km1sError } from '../common/errors.ts'
import { http } from '../common/http.ts'
import type { Logger } from '../common/logger.ts'
import {
  encodeChunked,
  encodeJsonFrame,
  Frame,
  FrameDecoder,
  type RequestOf,
  ResizeFrame,
  type ResponseOf,
  type RouteName,
  routes,
  type StreamItemOf,
  type StreamName,
  type StreamRequestOf,
  streams,
  UPGRADE_REQUEST_HEADER,
  type UpgradeName,
  type UpgradeRequestOf,
  upgrades,
} from './schemas.ts'

export type Handlers = { [R in RouteName]: (req: RequestOf<R>) => Promise<ResponseOf<R>> | ResponseOf<R> }
/** A stream handler may throw (or reject) before it returns its items: that is an ordinary error answer. */
export type StreamHandlers = {
  [S in StreamName]: (
    req: StreamRequestOf<S>,
    signal: AbortSignal,
  ) => AsyncIterable<StreamItemOf<S>> | Promise<AsyncIterable<StreamItemOf<S>>>
}

/** A running exec: what the exec handler returns (runtime/exec.ts's `startExec` makes one). */
export interface ExecSession {
  stdin: Writable
  stdout: Readable
  stderr: Readable | null
  resize(cols: number, rows: number): void
  kill(signal?: NodeJS.Signals): void
  exited: Promise<{ code: number | null; signal: string | null }>
}
export type UpgradeHandlers = {
  [U in UpgradeName]: (req: UpgradeRequestOf<U>, log: Logger) => Promise<ExecSession>
}

type AnyRoute = {
  method: string
  path: string
  request: {
    safeParse(x: unknown): {
      success: boolean
      data?: unknown
      error?: { issues: Array<{ path: PropertyKey[]; message: string }> }
    }
  }
}

function validate(route: AnyRoute, raw: unknown): unknown {
  const parsed = route.request.safeParse(raw)
  if (!parsed.success) {
    const issue = parsed.error?.issues[0]
    const where = issue?.path.length ? issue.path.join('.') : 'request'
    throw new Km1sError('ERR_INVALID', `Invalid ${where}: ${issue?.message ?? 'not allowed'}.`)
  }
  return parsed.data
}

const MAX_BODY_BYTES = 1 << 20

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_BODY_BYTES) throw new Km1sError('ERR_TOO_LARGE', 'The request body is larger than 1 MiB.')
    chunks.push(chunk as Buffer)
  }
  if (size === 0) return {}
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new Km1sError('ERR_BAD_REQUEST', 'The request body is not valid JSON.')
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

const STATUS_OF_CODE: Record<string, number> = {
  ERR_NOT_FOUND: 404,
  ERR_BAD_REQUEST: 400,
  ERR_INVALID: 400,
  ERR_TOO_LARGE: 413,
  ERR_NO_RUNTIME: 503,
}

function drainOrClose(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done)
      res.off('close', done)
      resolve()
    }
    res.on('drain', done)
    res.on('close', done)
  })
}

/** The status and body of an error answer (Km1sError codes as they are; anything else 500, logged). */
function errorAnswer(err: unknown, log: Logger, route: string): { status: number; body: unknown } {
  if (isKm1sError(err))
    return {
      status: STATUS_OF_CODE[err.code] ?? 409,
      body: { error: { code: err.code, message: err.message } },
    }
  log.error({ err: errorMessage(err), route }, 'API handler failed')
  return {
    status: 500,
    body: { error: { code: 'ERR_INTERNAL', message: `The agent failed: ${errorMessage(err)}` } },
  }
}

/** An error answer written on a socket taken over by 'upgrade' (no ServerResponse there). */
function sendRaw(socket: Socket, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Error'}\r\ncontent-type: application/json\r\n` +
      `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
  )
}

/** The upgrade request from its header: base64url of JSON, at most what Node lets a header hold. */
function readUpgradeRequest(value: string | string[] | undefined): unknown {
  if (typeof value !== 'string' || value === '')
    throw new Km1sError('ERR_BAD_REQUEST', `The request is missing its ${UPGRADE_REQUEST_HEADER} header.`)
  try {
    return JSON.parse(Buffer.from(value, 'base64url').toString('utf8'))
  } catch {
    throw new Km1sError(
      'ERR_BAD_REQUEST',
      `The ${UPGRADE_REQUEST_HEADER} header is not base64url-encoded JSON.`,
    )
  }
}

export class ApiServer {
  readonly #server: Server
  readonly #socket: string
  readonly #log: Logger
  readonly #sessions = new Set<Socket>()

  constructor(opts: {
    socket: string
    handlers: Handlers
    streams: StreamHandlers
    /** Without it (an agent not yet wiring them) the upgrade routes answer 404. */
    upgrades?: UpgradeHandlers
    logger: Logger
  }) {
    this.#socket = opts.socket
    this.#log = opts.logger.child({ subsystem: 'api' })
    const table = new Map<
      string,
      { route: AnyRoute; handle: (req: unknown, res: ServerResponse, signal: AbortSignal) => Promise<void> }
    >()
    for (const [name, route] of Object.entries(routes) as Array<[RouteName, (typeof routes)[RouteName]]>) {
      const handler = opts.handlers[name] as (r: unknown) => unknown
      table.set(`${route.method} ${route.path}`, {
        route,
        handle: async (req, res) => send(res, 200, await handler(req)),
      })
    }
    for (const [name, route] of Object.entries(streams) as Array<
      [StreamName, (typeof streams)[StreamName]]
    >) {
      const handler = opts.streams[name] as (
        r: unknown,
        signal: AbortSignal,
      ) => AsyncIterable<unknown> | Promise<AsyncIterable<unknown>>
      table.set(`${route.method} ${route.path}`, {
        route,
        handle: async (req, res, signal) => {
          const items = await handler(req, signal)
          res.writeHead(200, { 'content-type': 'application/x-ndjson' })
          res.flushHeaders()
          for await (const item of items) {
            if (signal.aborted) break
            // A client that leaves while we wait for drain would otherwise hold the handler forever.
            if (!res.write(`${JSON.stringify(item)}\n`)) await drainOrClose(res)
          }
          res.end()
        },
      })
    }
    const upgradeTable = new Map<
      string,
      { route: AnyRoute & { protocol: string }; handle: (req: unknown, log: Logger) => Promise<ExecSession> }
    >()
    for (const [name, route] of Object.entries(upgrades) as Array<
      [UpgradeName, (typeof upgrades)[UpgradeName]]
    >) {
      const handle = opts.upgrades?.[name] as ((r: unknown, log: Logger) => Promise<ExecSession>) | undefined
      if (handle) upgradeTable.set(`${route.method} ${route.path}`, { route, handle })
    }
    this.#server = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://km1s')
      const entry = table.get(`${req.method} ${url.pathname}`)
      void (async () => {
        try {
          const upgrade = upgradeTable.get(`${req.method} ${url.pathname}`)
          if (upgrade)
            throw new Km1sError(
              'ERR_BAD_REQUEST',
              `${req.method} ${url.pathname} must be an HTTP Upgrade to ${upgrade.route.protocol}; use 'km1s exec' or ApiClient.exec.`,
            )
          if (!entry)
            throw new Km1sError(
              'ERR_NOT_FOUND',
              `There is no API route ${req.method} ${url.pathname}; upgrade the km1s CLI to match the agent.`,
            )
          const raw = req.method === 'GET' ? Object.fromEntries(url.searchParams) : await readBody(req)
          const abort = new AbortController()
          res.once('close', () => abort.abort())
          await entry.handle(validate(entry.route, raw), res, abort.signal)
        } catch (err) {
          if (res.headersSent) return void res.destroy()
          const { status, body } = errorAnswer(err, this.#log, url.pathname)
          send(res, status, body)
        }
      })()
    })
    this.#server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      const url = new URL(req.url ?? '/', 'http://km1s')
      socket.on('error', (err) => this.#log.debug({ err: errorMessage(err) }, 'API upgrade socket error'))
      this.#sessions.add(socket)
      socket.once('close', () => this.#sessions.delete(socket))
      void (async () => {
        try {
          const entry = upgradeTable.get(`${req.method} ${url.pathname}`)
          if (!entry)
            throw new Km1sError(
              'ERR_NOT_FOUND',
              `There is no API upgrade route ${req.method} ${url.pathname}; upgrade the km1s CLI to match the agent.`,
            )
          if (String(req.headers.upgrade).toLowerCase() !== entry.route.protocol)
            throw new Km1sError(
              'ERR_BAD_REQUEST',
              `${req.method} ${url.pathname} upgrades only to ${entry.route.protocol}, not to ${req.headers.upgrade}.`,
            )
          const request = validate(entry.route, readUpgradeRequest(req.headers[UPGRADE_REQUEST_HEADER]))
          const session = await entry.handle(request, this.#log)
          if (socket.destroyed) return void session.kill('SIGKILL')
          socket.write(
            `HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: ${entry.route.protocol}\r\n\r\n`,
          )
          this.#serveExec(socket, session, head)
        } catch (err) {
          const { status, body } = errorAnswer(err, this.#log, url.pathname)
          if (!socket.destroyed) sendRaw(socket, status, body)
        }
      })()
    })
    this.#server.keepAliveTimeout = 1_000
  }

  /** Relays one exec session: frames from the client to the program, its output and exit back. */
  #serveExec(socket: Socket, s: ExecSession, head: Buffer): void {
    socket.setTimeout(0)
    socket.setNoDelay?.(true)
    const decoder = new FrameDecoder()
    let over = false
    let stdinOpen = true
    let stdinFull = false
    const finish = (last: Buffer) => {
      if (over) return
      over = true
      socket.end(last)
    }
    const fail = (code: string, message: string) => {
      if (over) return
      this.#log.warn({ code, message }, 'exec session ended by a bad frame')
      finish(encodeJsonFrame(Frame.error, { code, message }))
      s.kill('SIGKILL')
    }
    const onData = (chunk: Buffer) => {
      if (over) return
      let frames: ReturnType<FrameDecoder['push']>
      try {
        frames = decoder.push(chunk)
      } catch (err) {
        return fail('ERR_BAD_FRAME', errorMessage(err))
      }
      for (const f of frames) {
        if (f.type === Frame.stdin && stdinOpen) {
          if (!s.stdin.write(f.payload) && !stdinFull) {
            stdinFull = true
            socket.pause()
            s.stdin.once('drain', () => {
              stdinFull = false
              socket.resume()
            })
          }
        } else if (f.type === Frame.stdinEof && stdinOpen) {
          stdinOpen = false
          s.stdin.end()
        } else if (f.type === Frame.resize) {
          let size: unknown
          try {
            size = JSON.parse(f.payload.toString('utf8'))
          } catch {}
          const parsed = ResizeFrame.safeParse(size)
          if (!parsed.success)
            return fail(
              'ERR_BAD_FRAME',
              'A resize frame must hold JSON { cols, rows } of whole numbers 1–65535.',
            )
          s.resize(parsed.data.cols, parsed.data.rows)
        } else if (f.type === Frame.stdin || f.type === Frame.stdinEof) {
          return fail('ERR_BAD_FRAME', 'The client sent stdin after stdin-eof.')
        } else {
          return fail(
            'ERR_BAD_FRAME',
            `Frame type ${f.type} is not one a client sends (1 stdin, 2 stdin-eof, 3 resize).`,
          )
        }
      }
    }
    const relay = (stream: Readable | null, type: number) =>
      new Promise<void>((resolve) => {
        if (!stream) return resolve()
        stream.on('data', (chunk: Buffer) => {
          if (over) return
          let ok = true
          for (const frame of encodeChunked(type, chunk)) ok = socket.write(frame)
          if (!ok) {
            stream.pause()
            socket.once('drain', () => stream.resume())
          }
        })
        const done = () => resolve()
        stream.once('end', done)
        stream.once('close', done)
        stream.once('error', done)
      })
    // The client went away (its end of file too: stdin-eof is a frame, so EOF means gone; this socket is
    // half-open, as every HTTP server socket): nobody will see the output or status, so the program ends.
    const gone = () => {
      if (over) return
      over = true
      s.kill('SIGKILL')
      s.stdout.destroy()
      s.stderr?.destroy()
      socket.destroy()
    }
    socket.once('end', gone)
    socket.once('close', gone)
    s.stdin.on('error', () => {})
    Promise.all([s.exited, relay(s.stdout, Frame.stdout), relay(s.stderr, Frame.stderr)]).then(
      ([exit]) => finish(encodeJsonFrame(Frame.exit, exit)),
      (err) => {
        const { body } = errorAnswer(err, this.#log, '/v1/exec')
        finish(encodeJsonFrame(Frame.error, (body as { error: unknown }).error))
      },
    )
    socket.on('data', onData)
    if (head.length > 0) onData(head)
  }

  async start(): Promise<void> {
    // The agent holds the data directory's lock, so a socket file left here belongs to a dead agent.
    await unlink(this.#socket).catch(() => {})
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(this.#socket, () => {
        this.#server.off('error', reject)
        resolve()
      })
    })
    await chmod(this.#socket, 0o660)
    const gid = await groupId('km1s')
    if (gid !== undefined) await chown(this.#socket, 0, gid).catch(() => {})
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve())
      this.#server.closeAllConnections()
      // Upgraded sockets are no longer the HTTP server's: close() would wait for them.
      for (const socket of this.#sessions) socket.destroy()
    })
    await unlink(this.#socket).catch(() => {})
  }
}

async function groupId(name: string): Promise<number | undefined> {
  try {
    const { readFile } = await import('node:fs/promises')
    const line = (await readFile('/etc/group', 'utf8')).split('\n').find((l) => l.startsWith(`${name}:`))
    const gid = line ? Number(line.split(':')[2]) : Number.NaN
    return Number.isInteger(gid) ? gid : undefined
  } catch {
    return undefined
  }
}
