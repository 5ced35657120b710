// The agent's handlers: logs, exec and the container lookup go to the local runtime when it has the
// container, else to Remote; without Remote the node-local errors stand.
import assert from 'node:assert/strict'
import { PassThrough } from 'node:stream'
import { describe, it } from 'node:test'
import { createHandlers, type HandlerDeps } from '../../../src/agent/handlers.ts'
import type { ExecSession } from '../../../src/api/server.ts'
import type { Remote } from '../../../src/remote/index.ts'
import type { ContainerStatus, LogEntry, Runtime } from '../../../src/runtime/types.ts'

const status = (name: string): ContainerStatus => ({
  name,
  state: 'running',
  ip: null,
  processes: [{ name: 'main', state: 'running', pid: 1, restarts: 0, lastExit: null, nextStartAt: null }],
  error: null,
  createdAt: new Date(0).toISOString(),
})
const entry = (line: string): LogEntry => ({
  time: new Date(0).toISOString(),
  process: 'main',
  stream: 'stdout',
  line,
})

function runtime(names: string[]): Runtime {
  return {
    kind: 'process',
    start: async () => {},
    onChange: () => () => {},
    stop: async () => {},
    create: async () => status('x'),
    remove: async () => {},
    list: () => names.map(status),
    get: (n) => (names.includes(n) ? status(n) : undefined),
    logs: async function* () {
      yield entry('local')
    },
    prepareExec: async () => {
      throw new Error('local exec')
    },
  }
}

function fakeRemote() {
  const calls: string[] = []
  const session: ExecSession = {
    stdin: new PassThrough(),
    stdout: new PassThrough(),
    stderr: null,
    resize() {},
    kill() {},
    exited: Promise.resolve({ code: 0, signal: null }),
  }
  const remote = {
    logs: async (req: { container: string }) => {
      calls.push(`logs ${req.container}`)
      return (async function* () {
        yield entry('remote')
      })()
    },
    exec: async (req: { container: string }) => {
      calls.push(`exec ${req.container}`)
      return session
    },
    locate: async (name: string) => {
      calls.push(`locate ${name}`)
      return { node: 'n1', id: 'p1', containers: [status(name)], error: null }
    },
    stats: () => ({ served: 0, asked: 0, badFrames: 0, failures: 0, open: 0 }),
  }
  return { remote: remote as unknown as Remote, calls, session }
}

function handlers(rt: Runtime | undefined, remote: Remote | undefined) {
  return createHandlers({
    name: () => 'n2',
    dataDir: '/nonexistent',
    startedAt: 0,
    mesh: { peerId: { toString: () => 'p2' } } as unknown as HandlerDeps['mesh'],
    membership: {} as never,
    store: {} as never,
    replication: {} as never,
    runtime: rt,
    remote,
  })
}

async function lines(items: AsyncIterable<LogEntry> | Promise<AsyncIterable<LogEntry>>): Promise<string[]> {
  const out: string[] = []
  for await (const e of await items) out.push(e.line)
  return out
}

describe('handlers with remote', () => {
  const signal = new AbortController().signal

  it('serve a local container locally and proxy any other', async () => {
    const { remote, calls, session } = fakeRemote()
    const h = handlers(runtime(['web']), remote)
    assert.deepEqual(await lines(h.streams.logs({ container: 'web' }, signal)), ['local'])
    assert.deepEqual(await lines(h.streams.logs({ container: 'db' }, signal)), ['remote'])
    assert.equal(await h.upgrades.exec({ container: 'db', args: ['true'], tty: false }, {} as never), session)
    await assert.rejects(
      h.upgrades.exec({ container: 'web', args: ['true'], tty: false }, {} as never),
      /local exec/,
    )
    const where = await h.handlers.clusterContainers({ container: 'db' })
    assert.equal(where[0]?.node, 'n1')
    const here = await h.handlers.clusterContainers({ container: 'web' })
    assert.deepEqual([here[0]?.node, here[0]?.id], ['n2', 'p2'])
    assert.deepEqual(calls, ['logs db', 'exec db', 'locate db'])
  })

  it('proxy from a node that runs no containers itself', async () => {
    const { remote, calls } = fakeRemote()
    const h = handlers(undefined, remote)
    assert.deepEqual(await lines(h.streams.logs({ container: 'web' }, signal)), ['remote'])
    assert.deepEqual(calls, ['logs web'])
  })

  it('keep the node-local errors without remote', async () => {
    const h = handlers(runtime([]), undefined)
    assert.throws(() => h.streams.logs({ container: 'db' }, signal), /no container named db on this node/)
    await assert.rejects(
      h.upgrades.exec({ container: 'db', args: ['true'], tty: false }, {} as never),
      /no container named db on this node/,
    )
  })
})
