// The typed client of the control API; the CLI, the tests and the benchmarks talk to agents only through it.
import type { IncomingMessage } from 'node:http'
import { Km1sError } from '../common/errors.ts'
import { http } from '../common/http.ts'
import {
  ApiError,
  type RequestOf,
  type ResponseOf,
  type RouteName,
  routes,
  type StreamItemOf,
  type StreamName,
  type StreamRequestOf,
  streams,
} from './schemas.ts'

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

  /** A streaming route: items as they come, until `signal` aborts or the agent ends the stream. */
  async *stream<S extends StreamName>(
    name: S,
    body: StreamRequestOf<S>,
    signal: AbortSignal,
  ): AsyncGenerator<StreamItemOf<S>> {
    const route = streams[name]
    const query = new URLSearchParams(body as Record<string, string>).toString()
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = http.request(
        { socketPath: this.socket, path: `${route.path}?${query}`, method: route.method, signal },
        resolve,
      )
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.#connectionError(err)))
      req.end()
    })
    if (res.statusCode !== 200) {
      const chunks: Buffer[] = []
      for await (const c of res) chunks.push(c as Buffer)
      const err = ApiError.safeParse(JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'))
      throw err.success
        ? new Km1sError(err.data.error.code, err.data.error.message)
        : new Km1sError(
            'ERR_BAD_RESPONSE',
            `The agent answered HTTP ${res.statusCode} without an error message.`,
          )
    }
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
      if (!signal.aborted) throw err
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

  async call<R extends RouteName>(name: R, body: RequestOf<R>): Promise<ResponseOf<R>> {
    const route = routes[name]
    const query = route.method === 'GET' ? new URLSearchParams(body as Record<string, string>).toString() : ''
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
