// The control API server: HTTP over a Unix socket (mode 0660, group km1s when it exists), a handler
// table keyed by route, every request validated against its schema, errors as { error: { code, message } }.
import { chmod, chown, unlink } from 'node:fs/promises'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import { errorMessage, isKm1sError, Km1sError } from '../common/errors.ts'
import { http } from '../common/http.ts'
import type { Logger } from '../common/logger.ts'
import {
  type RequestOf,
  type ResponseOf,
  type RouteName,
  routes,
  type StreamItemOf,
  type StreamName,
  type StreamRequestOf,
  streams,
} from './schemas.ts'

export type Handlers = { [R in RouteName]: (req: RequestOf<R>) => Promise<ResponseOf<R>> | ResponseOf<R> }
export type StreamHandlers = {
  [S in StreamName]: (req: StreamRequestOf<S>, signal: AbortSignal) => AsyncIterable<StreamItemOf<S>>
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
}

export class ApiServer {
  readonly #server: Server
  readonly #socket: string
  readonly #log: Logger

  constructor(opts: { socket: string; handlers: Handlers; streams: StreamHandlers; logger: Logger }) {
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
      const handler = opts.streams[name] as (r: unknown, signal: AbortSignal) => AsyncIterable<unknown>
      table.set(`${route.method} ${route.path}`, {
        route,
        handle: async (req, res, signal) => {
          res.writeHead(200, { 'content-type': 'application/x-ndjson' })
          res.flushHeaders()
          for await (const item of handler(req, signal)) {
            if (!res.write(`${JSON.stringify(item)}\n`)) await new Promise((r) => res.once('drain', r))
          }
          res.end()
        },
      })
    }
    this.#server = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://km1s')
      const entry = table.get(`${req.method} ${url.pathname}`)
      void (async () => {
        try {
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
          if (isKm1sError(err))
            return send(res, STATUS_OF_CODE[err.code] ?? 409, {
              error: { code: err.code, message: err.message },
            })
          this.#log.error({ err: errorMessage(err), route: url.pathname }, 'API handler failed')
          send(res, 500, {
            error: { code: 'ERR_INTERNAL', message: `The agent failed: ${errorMessage(err)}` },
          })
        }
      })()
    })
    this.#server.keepAliveTimeout = 1_000
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
