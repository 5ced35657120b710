// The container routes, the logs stream and exec, through a real ApiServer on a temporary socket, with the
// agent's handlers over a FAKE runtime in memory (the real runtimes have their own lab tests). Also the CLI
// commands, run as a user would against the same server.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { after, before, beforeEach, describe, it } from 'node:test'
import { pino } from 'pino'
import { createHandlers } from '../../../src/agent/handlers.ts'
import { ApiClient } from '../../../src/api/client.ts'
import { encodeFrame, Frame, FrameDecoder, UPGRADE_REQUEST_HEADER } from '../../../src/api/schemas.ts'
import { ApiServer } from '../../../src/api/server.ts'
import { Km1sError } from '../../../src/common/errors.ts'
import { http } from '../../../src/common/http.ts'
import {
  ContainerSpec,
  type ContainerSpecInput,
  type ContainerStatus,
  type ExecRequest,
  type LogEntry,
  type LogQuery,
  type PreparedExec,
  type Runtime,
} from '../../../src/runtime/types.ts'
import { untilWithin } from '../until.ts'

const until = untilWithin(5_000)

const silent = pino({ level: 'silent' })
const ROOT = resolve(import.meta.dirname, '../../..')
const NODE = join(ROOT, 'node_modules/.bin/node')

/** The Runtime interface in memory: containers are records, logs a list, exec a local command. */
class FakeRuntime implements Runtime {
  onChange(): () => void {
    return () => {}
  }
  readonly kind = 'process' as const
  readonly containers = new Map<string, ContainerStatus>()
  readonly entries: LogEntry[] = []
  readonly queries: LogQuery[] = []
  readonly execs: ExecRequest[] = []
  cleanups = 0
  #waiters = new Set<() => void>()

  async start() {}
  async stop() {}

  async create(input: ContainerSpecInput): Promise<ContainerStatus> {
    const spec = ContainerSpec.parse(input)
    if (this.containers.has(spec.name))
      throw new Km1sError('ERR_EXISTS', `A container named ${spec.name} already exists on this node.`)
    const status: ContainerStatus = {
      name: spec.name,
      state: 'running',
      ip: '10.42.0.2',
      processes: spec.processes.map((p) => ({
        name: p.name,
        state: 'running',
        pid: 1234,
        restarts: 0,
        lastExit: null,
        nextStartAt: null,
      })),
      error: null,
      createdAt: new Date(0).toISOString(),
    }
    this.containers.set(spec.name, status)
    return status
  }

  async remove(name: string) {
    if (!this.containers.delete(name)) throw new Km1sError('ERR_NOT_FOUND', `No container ${name}.`)
  }

  list() {
    return [...this.containers.values()]
  }

  get(name: string) {
    return this.containers.get(name)
  }

  push(e: LogEntry) {
    this.entries.push(e)
    for (const w of this.#waiters) w()
  }

  async *logs(name: string, query: LogQuery): AsyncIterable<LogEntry> {
    this.queries.push(query)
    const match = (e: LogEntry) =>
      (query.process === undefined || e.process === query.process) &&
      (query.sinceMs === undefined || Date.parse(e.time) >= query.sinceMs) &&
      name !== ''
    let seen = this.entries.length
    const old = this.entries.filter(match)
    yield* query.tail === undefined ? old : old.slice(Math.max(0, old.length - query.tail))
    const signal = query.signal
    while (query.follow && !signal?.aborted) {
      await new Promise<void>((wake) => {
        const done = () => {
          this.#waiters.delete(done)
          signal?.removeEventListener('abort', done)
          wake()
        }
        this.#waiters.add(done)
        signal?.addEventListener('abort', done)
      })
      for (const e of this.entries.slice(seen)) if (match(e)) yield e
      seen = this.entries.length
    }
  }

  async prepareExec(req: ExecRequest): Promise<PreparedExec> {
    this.execs.push(req)
    return {
      argv: req.args,
      env: { PATH: '/usr/bin:/bin', ...req.env },
      cwd: req.env?.TEST_CWD ?? '/',
      pidFile: null,
      cleanup: async () => {
        this.cleanups++
      },
    }
  }
}

async function serve(dir: string, name: string, runtime: Runtime | undefined) {
  const { handlers, streams, upgrades } = createHandlers({
    name: () => 'test',
    dataDir: dir,
    startedAt: 0,
    mesh: {} as never,
    membership: {} as never,
    store: {} as never,
    replication: {} as never,
    runtime,
  })
  const socket = join(dir, name)
  const server = new ApiServer({ socket, handlers, streams, upgrades, logger: silent })
  await server.start()
  return { server, socket, client: new ApiClient(socket, { timeoutMs: 5_000 }) }
}

/** The status and JSON body of a plain request, for checking HTTP statuses. */
function raw(socket: string, method: string, path: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: { error?: { code: string; message: string } } }>((ok, fail) => {
    const req = http.request({ socketPath: socket, method, path, headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () =>
        ok({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) }),
      )
    })
    req.on('error', fail)
    req.end()
  })
}

/** An upgraded exec socket without ApiClient, to send what a client must not. */
function rawExec(socket: string, request: unknown) {
  return new Promise<{ socket: Socket; head: Buffer }>((ok, fail) => {
    const req = http.request({
      socketPath: socket,
      method: 'POST',
      path: '/v1/exec',
      headers: {
        connection: 'Upgrade',
        upgrade: 'km1s-exec',
        [UPGRADE_REQUEST_HEADER]: Buffer.from(JSON.stringify(request)).toString('base64url'),
      },
    })
    req.on('upgrade', (_res: IncomingMessage, s: Socket, head: Buffer) => ok({ socket: s, head }))
    req.on('response', (res: IncomingMessage) => fail(new Error(`HTTP ${res.statusCode}`)))
    req.on('error', fail)
    req.end()
  })
}

/** Every frame the agent sends until it closes the socket. */
function framesUntilClose(s: Socket, head: Buffer) {
  return new Promise<Array<{ type: number; payload: Buffer }>>((ok) => {
    const d = new FrameDecoder()
    const got = [...d.push(head)]
    s.on('data', (c: Buffer) => got.push(...d.push(c)))
    s.on('close', () => ok(got))
    s.on('error', () => {})
  })
}

async function runExec(client: ApiClient, req: Parameters<ApiClient['exec']>[0], input?: string) {
  const ch = await client.exec(req)
  let stdout = ''
  let stderr = ''
  ch.stdout.on('data', (d: Buffer) => {
    stdout += d.toString()
  })
  ch.stderr.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  ch.stdin.end(input)
  const exit = await ch.exited
  return { exit, stdout, stderr }
}

const web: ContainerSpecInput = {
  name: 'web',
  processes: [
    { name: 'main', args: ['/bin/server'] },
    { name: 'sidecar', args: ['/bin/sidecar'] },
  ],
}
const entry = (process: string, line: string, at = '2025-01-01T00:00:00.000000000Z'): LogEntry => ({
  time: at,
  process,
  stream: 'stdout',
  line,
})

let dir = ''
let fake: FakeRuntime
let api: Awaited<ReturnType<typeof serve>>
let bare: Awaited<ReturnType<typeof serve>>
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'km1s-api-'))
  fake = new FakeRuntime()
  api = await serve(dir, 'api.sock', fake)
  bare = await serve(dir, 'bare.sock', undefined)
})
after(async () => {
  await api?.server.stop()
  await bare?.server.stop()
  await rm(dir, { recursive: true, force: true })
})
beforeEach(() => {
  fake.containers.clear()
  fake.entries.length = 0
  fake.queries.length = 0
})

describe('container routes', () => {
  it('create, list and remove', async () => {
    const created = await api.client.createContainer(web)
    assert.equal(created.name, 'web')
    assert.deepEqual(
      created.processes.map((p) => p.name),
      ['main', 'sidecar'],
    )
    assert.deepEqual(
      (await api.client.containers()).map((c) => c.name),
      ['web'],
    )
    assert.deepEqual(await api.client.removeContainer('web'), {})
    assert.deepEqual(await api.client.containers(), [])
  })

  it('an invalid spec is ERR_INVALID (400) naming the first issue’s path', async () => {
    await assert.rejects(
      api.client.createContainer({ name: 'web', processes: [{ name: 'main', args: [] }] }),
      { code: 'ERR_INVALID', message: 'Invalid processes.0.args: must name the program to run.' },
    )
    await assert.rejects(api.client.createContainer({ name: 'Web_1', processes: [] }), (err: Km1sError) => {
      assert.equal(err.code, 'ERR_INVALID')
      assert.match(err.message, /^Invalid name: must be lowercase letters/)
      return true
    })
    await assert.rejects(
      api.client.createContainer({ ...web, extra: 1 } as ContainerSpecInput),
      /Invalid request: Unrecognized key: "extra"\./,
    )
    const res = await new Promise<number>((ok) => {
      const req = http.request(
        { socketPath: api.socket, method: 'POST', path: '/v1/containers' },
        (r: IncomingMessage) => {
          r.resume()
          ok(r.statusCode ?? 0)
        },
      )
      req.end('{"name":"x","processes":[]}')
    })
    assert.equal(res, 400)
    assert.equal(fake.containers.size, 0)
  })

  it('the runtime’s own errors come through (a name in use is 409)', async () => {
    await api.client.createContainer(web)
    await assert.rejects(api.client.createContainer(web), { code: 'ERR_EXISTS' })
  })

  it('removing an unknown container is ERR_NOT_FOUND (404)', async () => {
    await assert.rejects(api.client.removeContainer('ghost'), {
      code: 'ERR_NOT_FOUND',
      message: "There is no container named ghost on this node; 'km1s containers' lists them.",
    })
    await assert.rejects(api.client.removeContainer('Not-A-Name'), { code: 'ERR_INVALID' })
  })

  it('an agent without a runtime answers ERR_NO_RUNTIME (503) on every container route', async () => {
    const r = await raw(bare.socket, 'GET', '/v1/containers')
    assert.equal(r.status, 503)
    assert.equal(r.body.error?.code, 'ERR_NO_RUNTIME')
    assert.match(r.body.error?.message ?? '', /^This agent runs no container runtime; [^\n]+\.$/)
    await assert.rejects(bare.client.createContainer(web), { code: 'ERR_NO_RUNTIME' })
    await assert.rejects(bare.client.removeContainer('web'), { code: 'ERR_NO_RUNTIME' })
    const ac = new AbortController()
    await assert.rejects(
      async () => {
        for await (const _ of bare.client.logs({ container: 'web' }, ac.signal));
      },
      { code: 'ERR_NO_RUNTIME' },
    )
    await assert.rejects(bare.client.exec({ container: 'web', args: ['/bin/true'], tty: false }), {
      code: 'ERR_NO_RUNTIME',
    })
  })
})

describe('logs stream', () => {
  it('streams the entries with the query passed on, numbers and booleans read from the query string', async () => {
    await api.client.createContainer(web)
    fake.push(entry('main', 'one'))
    fake.push(entry('sidecar', 'two'))
    fake.push(entry('main', 'three'))
    const ac = new AbortController()
    const got: LogEntry[] = []
    for await (const e of api.client.logs(
      { container: 'web', process: 'main', tail: 1, sinceMs: 5, follow: false },
      ac.signal,
    ))
      got.push(e)
    assert.deepEqual(got, [entry('main', 'three')])
    const q = fake.queries[0]
    assert.deepEqual(
      { ...q, signal: undefined },
      { process: 'main', tail: 1, sinceMs: 5, follow: false, signal: undefined },
    )
    assert.ok(q?.signal instanceof AbortSignal)
  })

  it('refuses an unknown container or process before streaming (404), and bad query values (400)', async () => {
    await api.client.createContainer(web)
    const ac = new AbortController()
    const drain = async (q: Parameters<ApiClient['logs']>[0]) => {
      for await (const _ of api.client.logs(q, ac.signal));
    }
    await assert.rejects(drain({ container: 'ghost' }), { code: 'ERR_NOT_FOUND' })
    await assert.rejects(drain({ container: 'web', process: 'nope' }), {
      code: 'ERR_NOT_FOUND',
      message: 'Container web has no process named nope; it has main, sidecar.',
    })
    assert.equal((await raw(api.socket, 'GET', '/v1/logs?container=web&tail=-1')).status, 400)
    const yesno = await raw(api.socket, 'GET', '/v1/logs?container=web&follow=maybe')
    assert.equal(yesno.status, 400)
    assert.match(yesno.body.error?.message ?? '', /^Invalid follow: /)
    assert.equal((await raw(api.socket, 'GET', '/v1/logs?container=web&sinceMs=soon')).status, 400)
    assert.equal(fake.queries.length, 0)
  })

  it('follows new entries, and the runtime’s signal aborts when the client leaves', async () => {
    await api.client.createContainer(web)
    fake.push(entry('main', 'before'))
    const ac = new AbortController()
    const got: string[] = []
    const reading = (async () => {
      for await (const e of api.client.logs({ container: 'web', follow: true }, ac.signal)) got.push(e.line)
    })()
    await until('the existing entry', () => got.length === 1)
    fake.push(entry('sidecar', 'after'))
    await until('the new entry', () => got.length === 2)
    assert.deepEqual(got, ['before', 'after'])
    const signal = fake.queries[0]?.signal
    assert.equal(signal?.aborted, false)
    ac.abort()
    await reading
    await until('the runtime’s signal to abort', () => signal?.aborted)
  })
})

describe('exec', () => {
  beforeEach(async () => {
    await api.client.createContainer(web)
    fake.execs.length = 0
  })

  it('relays stdin, stdout and stderr without a terminal and returns the exit code', async () => {
    const before = fake.cleanups
    const r = await runExec(
      api.client,
      {
        container: 'web',
        args: ['/bin/sh', '-c', 'read x; echo got $x; echo "$GREETING" >&2; exit 3'],
        tty: false,
        env: { GREETING: 'hej' },
        process: 'sidecar',
      },
      'hello\n',
    )
    assert.deepEqual(r, { exit: { code: 3, signal: null }, stdout: 'got hello\n', stderr: 'hej\n' })
    assert.deepEqual(fake.execs, [
      {
        container: 'web',
        args: ['/bin/sh', '-c', 'read x; echo got $x; echo "$GREETING" >&2; exit 3'],
        tty: false,
        env: { GREETING: 'hej' },
        process: 'sidecar',
      },
    ])
    await until('cleanup', () => fake.cleanups === before + 1)
  })

  it('gives a terminal of the asked size, with input echoed and the exit code back', async () => {
    const ch = await api.client.exec({
      container: 'web',
      args: ['/bin/sh', '-c', 'stty size; read x; echo got $x; exit 5'],
      tty: true,
      cols: 100,
      rows: 30,
    })
    let out = ''
    ch.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    await until('the size', () => out.includes('30 100'))
    ch.stdin.write('hello\n')
    assert.deepEqual(await ch.exited, { code: 5, signal: null })
    assert.equal(out, '30 100\r\nhello\r\ngot hello\r\n')
  })

  it('resize and Ctrl-C reach the program through its terminal', async () => {
    const ch = await api.client.exec({
      container: 'web',
      args: [
        '/bin/sh',
        '-c',
        'trap "echo INT; exit 9" INT; echo ready; while [ "$(stty size)" != "43 132" ]; do sleep 0.05; done; echo resized; sleep 5',
      ],
      tty: true,
    })
    let out = ''
    ch.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    await until('ready', () => out.includes('ready'))
    ch.resize(132, 43)
    await until('resized', () => out.includes('resized'))
    ch.stdin.write('\x03')
    assert.deepEqual(await ch.exited, { code: 9, signal: null })
    assert.match(out, /resized\r\n(\^C)?INT\r\n$/)
  })

  it('carries output and input larger than one frame', async () => {
    const big = await runExec(api.client, {
      container: 'web',
      args: ['/bin/sh', '-c', "head -c 300000 /dev/zero | tr '\\0' a"],
      tty: false,
    })
    assert.equal(big.stdout.length, 300_000)
    assert.match(big.stdout, /^a+$/)
    const count = await runExec(
      api.client,
      { container: 'web', args: ['/usr/bin/wc', '-c'], tty: false },
      'x'.repeat(200_000),
    )
    assert.equal(count.stdout.trim(), '200000')
  })

  it('refuses before switching protocols: unknown container or process (404), invalid request (400)', async () => {
    await assert.rejects(api.client.exec({ container: 'ghost', args: ['/bin/true'], tty: false }), {
      code: 'ERR_NOT_FOUND',
    })
    await assert.rejects(
      api.client.exec({ container: 'web', args: ['/bin/true'], tty: false, process: 'x' }),
      {
        code: 'ERR_NOT_FOUND',
      },
    )
    await assert.rejects(api.client.exec({ container: 'web', args: [], tty: false }), {
      code: 'ERR_INVALID',
      message: 'Invalid args: must name the program to run.',
    })
    await assert.rejects(api.client.exec({ container: 'web', args: ['/bin/true'], tty: false, cols: 0 }), {
      code: 'ERR_INVALID',
    })
    const plain = await raw(api.socket, 'POST', '/v1/exec')
    assert.equal(plain.status, 400)
    assert.match(plain.body.error?.message ?? '', /must be an HTTP Upgrade to km1s-exec/)
    const noHeader = await raw(api.socket, 'POST', '/v1/exec', {
      connection: 'Upgrade',
      upgrade: 'km1s-exec',
    })
    assert.equal(noHeader.status, 400)
    assert.equal(noHeader.body.error?.code, 'ERR_BAD_REQUEST')
    const wrong = await raw(api.socket, 'POST', '/v1/exec', { connection: 'Upgrade', upgrade: 'websocket' })
    assert.equal(wrong.status, 400)
    const elsewhere = await raw(api.socket, 'GET', '/v1/health', {
      connection: 'Upgrade',
      upgrade: 'km1s-exec',
    })
    assert.equal(elsewhere.status, 404)
    assert.equal(fake.execs.length, 0)
  })

  it('a program that cannot start ends the session with an error frame', async () => {
    const ch = await api.client.exec({ container: 'web', args: ['/nonexistent/prog'], tty: false })
    ch.stdin.end()
    await assert.rejects(ch.exited, {
      code: 'ERR_EXEC_START',
      message: /^Could not start \/nonexistent\/prog: ENOENT\.$/,
    })
  })

  for (const [what, garbage] of [
    ['an unknown frame type', encodeFrame(42, 'x')],
    ['a frame type only the agent sends', encodeFrame(Frame.stdout, 'x')],
    ['a frame longer than 64 KiB', Buffer.from([1, 0xff, 0xff, 0xff, 0xff])],
    ['a resize that is not { cols, rows }', encodeFrame(Frame.resize, '{"cols":"wide"}')],
    ['a resize that is not JSON', encodeFrame(Frame.resize, '\x00\x01')],
    ['stdin after stdin-eof', Buffer.concat([encodeFrame(Frame.stdinEof), encodeFrame(Frame.stdin, 'late')])],
  ] as const) {
    it(`${what} is answered with an error frame, the program ends and the agent keeps serving`, async () => {
      const before = fake.cleanups
      const { socket, head } = await rawExec(api.socket, {
        container: 'web',
        args: ['/bin/sleep', '30'],
        tty: false,
      })
      const frames = framesUntilClose(socket, head)
      socket.write(garbage)
      const got = await frames
      assert.equal(got.length, 1)
      assert.equal(got[0]?.type, Frame.error)
      const err = JSON.parse(got[0]?.payload.toString() ?? '')
      assert.equal(err.code, 'ERR_BAD_FRAME')
      assert.match(err.message, /^[^\n]+\.$/)
      await until('the program to end and be cleaned up', () => fake.cleanups === before + 1)
      assert.equal((await api.client.containers()).length, 1)
      assert.equal(
        (await runExec(api.client, { container: 'web', args: ['/bin/true'], tty: false })).exit.code,
        0,
      )
    })
  }

  it('a client that goes away ends the program', async () => {
    const before = fake.cleanups
    const ch = await api.client.exec({ container: 'web', args: ['/bin/sleep', '30'], tty: true })
    ch.close()
    await assert.rejects(ch.exited, { code: 'ERR_EXEC_LOST' })
    await until('the program to end', () => fake.cleanups === before + 1)
  })

  it('frames sent with the upgrade request itself are read (the head)', async () => {
    const { socket, head } = await rawExec(api.socket, { container: 'web', args: ['/bin/cat'], tty: false })
    const frames = framesUntilClose(socket, head)
    socket.write(
      Buffer.concat([
        encodeFrame(Frame.stdin, 'ab'),
        encodeFrame(Frame.stdin, 'c'),
        encodeFrame(Frame.stdinEof),
      ]),
    )
    const got = await frames
    assert.equal(
      got
        .filter((f) => f.type === Frame.stdout)
        .map((f) => f.payload.toString())
        .join(''),
      'abc',
    )
    assert.deepEqual(JSON.parse(got.at(-1)?.payload.toString() ?? ''), { code: 0, signal: null })
    assert.equal(got.at(-1)?.type, Frame.exit)
  })

  it('stop() ends open sessions instead of waiting for them', async () => {
    const own = await serve(dir, 'stop.sock', fake)
    const ch = await own.client.exec({ container: 'web', args: ['/bin/sleep', '30'], tty: false })
    const t0 = Date.now()
    await own.server.stop()
    assert.ok(Date.now() - t0 < 2_000)
    await assert.rejects(ch.exited, { code: 'ERR_EXEC_LOST' })
  })
})

function cli(args: string[], opts: { input?: string; socket?: string } = {}) {
  return new Promise<{ code: number; stdout: string; stderr: string }>((ok) => {
    const child = execFile(
      NODE,
      [join(ROOT, 'src/cli/main.ts'), '--socket', opts.socket ?? api.socket, ...args],
      { timeout: 20_000 },
      (err, stdout, stderr) =>
        ok({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    )
    child.stdin?.end(opts.input ?? '')
  })
}

describe('CLI: containers, logs, exec', () => {
  it('containers: a table, --json the array; create -f and rm', async () => {
    const file = join(dir, 'web.json')
    await writeFile(file, JSON.stringify(web))
    const made = await cli(['containers', 'create', '-f', file])
    assert.equal(made.code, 0, made.stderr)
    assert.equal(made.stdout, 'Created container web: running, 2/2 processes running, IP 10.42.0.2.\n')
    fake.containers.set('bad', {
      name: 'bad',
      state: 'degraded',
      ip: null,
      processes: [
        {
          name: 'main',
          state: 'backoff',
          pid: null,
          restarts: 4,
          lastExit: { reason: 'exited', code: 3, signal: null, message: 'exited with code 3', at: '' },
          nextStartAt: null,
        },
      ],
      error: null,
      createdAt: '',
    })
    const table = await cli(['ctr'])
    assert.equal(
      table.stdout,
      'NAME  STATE     IP         PROCESSES  RESTARTS  REASON\n' +
        'web   running   10.42.0.2  2/2        0\n' +
        'bad   degraded  -          0/1        4         main: exited with code 3\n',
    )
    const json = JSON.parse((await cli(['--json', 'containers'])).stdout)
    assert.deepEqual(
      json.map((c: ContainerStatus) => c.name),
      ['web', 'bad'],
    )
    assert.equal((await cli(['containers', 'rm', 'web'])).stdout, 'Removed container web.\n')
    const gone = await cli(['containers', 'rm', 'web'])
    assert.equal(gone.code, 1)
    assert.equal(gone.stderr, "There is no container named web on this node; 'km1s containers' lists them.\n")
    const yaml = await cli(['containers', 'create', '-f', join(dir, 'web.yaml')])
    assert.equal(yaml.code, 1)
    assert.match(yaml.stderr, /JSON for now/)
    const stdin = await cli(['containers', 'create', '-f', '-'], { input: '{"name":"x","processes":[]}' })
    assert.equal(stdin.stderr, 'Invalid processes: must have at least one process.\n')
  })

  it('logs: process | text for several processes, bare text for one, --json NDJSON', async () => {
    await api.client.createContainer(web)
    fake.push(entry('main', 'one'))
    fake.push(entry('sidecar', 'two'))
    assert.equal((await cli(['logs', 'web'])).stdout, 'main | one\nsidecar | two\n')
    assert.equal((await cli(['logs', 'web', '--process', 'main'])).stdout, 'one\n')
    assert.equal((await cli(['logs', 'web', '--tail', '1'])).stdout, 'sidecar | two\n')
    const nd = (await cli(['--json', 'logs', 'web'])).stdout.trim().split('\n')
    assert.deepEqual(
      nd.map((l) => JSON.parse(l)),
      [entry('main', 'one'), entry('sidecar', 'two')],
    )
    const since = await cli(['logs', 'web', '--since', '5m'])
    assert.equal(since.code, 0)
    const q = fake.queries.at(-1)
    assert.ok(q?.sinceMs !== undefined && Math.abs(q.sinceMs - (Date.now() - 300_000)) < 30_000)
    const bad = await cli(['logs', 'web', '--since', 'yesterday'])
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /^Invalid --since value "yesterday"/)
    assert.equal((await cli(['logs', 'web', '--tail', 'x'])).code, 1)
    assert.equal(
      (await cli(['logs', 'ghost'])).stderr,
      "There is no container named ghost on this node; 'km1s containers' lists them.\n",
    )
  })

  it('exec: stdin only with -i, exit status of the program, 128 + N for a signal, -e', async () => {
    await api.client.createContainer(web)
    const r = await cli(
      ['exec', 'web', '-i', '-e', 'A=1=2', '--', '/bin/sh', '-c', 'cat; echo "A=$A" >&2; exit 4'],
      {
        input: 'piped\n',
      },
    )
    assert.deepEqual(r, { code: 4, stdout: 'piped\n', stderr: 'A=1=2\n' })
    const noI = await cli(['exec', 'web', '--', '/bin/sh', '-c', 'cat; echo end'], { input: 'ignored\n' })
    assert.deepEqual(noI, { code: 0, stdout: 'end\n', stderr: '' })
    const sig = await cli(['exec', 'web', '--', '/bin/sh', '-c', 'kill -TERM $$'])
    assert.equal(sig.code, 143)
    const tty = await cli([
      'exec',
      'web',
      '-t',
      '--',
      '/bin/sh',
      '-c',
      'test -t 0 && echo tty; echo "$TERM"; exit 2',
    ])
    assert.equal(tty.code, 2)
    assert.match(tty.stdout, /^tty\r\n\S+\r\n$/)
    const bad = await cli(['exec', 'web', '-e', 'NOVALUE', '--', '/bin/true'])
    assert.equal(bad.stderr, "Invalid -e 'NOVALUE': give NAME=VALUE, as in -e DEBUG=1.\n")
    const none = await cli(['exec', 'web', '--', '/bin/true'], { socket: bare.socket })
    assert.equal(none.code, 1)
    assert.match(none.stderr, /^This agent runs no container runtime; /)
  })

  /** Runs `shell` under a terminal (script); `react` may type into it when it sees output. */
  function underTerminal(shell: string, react: (seen: string, type: (s: string) => void) => void = () => {}) {
    return new Promise<string>((ok) => {
      const child = execFile(
        'script',
        ['-qec', shell, '/dev/null'],
        { timeout: 20_000, env: { ...process.env, SHELL: '/bin/sh' } },
        (_e, stdout) => ok(stdout),
      )
      let seen = ''
      child.stdout?.on('data', (d: Buffer) => {
        seen += d.toString()
        react(seen, (s) => child.stdin?.write(s))
      })
    })
  }
  const q = (a: string) => `'${a.replaceAll("'", `'\\''`)}'`
  const kmExec = (...args: string[]) =>
    [NODE, join(ROOT, 'src/cli/main.ts'), '--socket', api.socket, 'exec', 'web', '-it', '--', ...args]
      .map(q)
      .join(' ')
  // The terminal's mode before and after: -icanon after would mean raw mode was left on.
  const mode = `stty -a | grep -o -- '-\\?icanon' | head -1`

  it('exec -it under a real terminal: raw mode, Ctrl-C to the program, the terminal restored after', async () => {
    await api.client.createContainer(web)
    let sent = false
    const out = await underTerminal(
      `${mode}; ${kmExec('/bin/sh', '-c', 'trap "echo got-INT; exit 7" INT; echo ready; sleep 5')}; echo "rc=$?"; ${mode}`,
      (seen, type) => {
        if (seen.includes('ready') && !sent) {
          sent = true
          setTimeout(() => type('\x03'), 100)
        }
      },
    )
    // One \r per line inside: the local terminal passed the remote terminal's output as it is (-opost).
    assert.equal(out, 'icanon\r\nready\r\n^Cgot-INT\r\nrc=7\r\nicanon\r\n')
  })

  it('exec -it restores the terminal after an error and after a signal', async () => {
    await api.client.createContainer(web)
    const missing = await underTerminal(`${kmExec('/nonexistent/prog')}; echo "rc=$?"; ${mode}`)
    assert.equal(missing, 'sh: 1: exec: /nonexistent/prog: not found\r\nrc=127\r\nicanon\r\n')
    const failed = await underTerminal(
      `${kmExec('/bin/true').replace("'-it'", "'-it' '-e' 'TEST_CWD=/nonexistent'")}; echo "rc=$?"; ${mode}`,
    )
    assert.equal(
      failed,
      'Could not start /bin/true: its working directory /nonexistent does not exist.\r\nrc=1\r\nicanon\r\n',
    )
    // In the background a non-interactive sh gives stdin /dev/null: hand it the terminal explicitly.
    const killed = await underTerminal(
      `${kmExec('/bin/sh', '-c', 'echo ready; sleep 5')} </dev/tty & pid=$!; ` +
        `while ! ${mode} | grep -q -- -icanon; do sleep 0.05; done; sleep 0.2; kill -TERM $pid; wait $pid; echo "rc=$?"; ${mode}`,
    )
    assert.match(killed, /rc=143\r\nicanon\r\n$/)
  })
})
