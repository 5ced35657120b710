// /km1s/remote/1.0.0 between two real libp2p nodes on loopback (TCP, noise, yamux: the real flow control),
// each with a fake runtime; plus the request validation, garbage and oversized frames.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { noise } from '@libp2p/noise'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { createLibp2p, type Libp2p } from 'libp2p'
import { pino } from 'pino'
import { encodeFrame, FrameDecoder } from '../../../src/api/schemas.ts'
import { isKm1sError } from '../../../src/common/errors.ts'
import type { Member } from '../../../src/membership/index.ts'
import {
  decodeRequest,
  MAX_REQUEST_BYTES,
  READ_BUFFER_BYTES,
  REMOTE_PROTOCOL,
  Remote,
  RemoteFrame,
} from '../../../src/remote/index.ts'
import type { ContainerStatus, LogEntry, LogQuery, Runtime } from '../../../src/runtime/types.ts'
import { untilWithin } from '../until.ts'

const until = untilWithin(5_000, 20)

const log = pino({ level: 'silent' })

describe('remote requests', () => {
  const json = (v: unknown) => Buffer.from(JSON.stringify(v))
  it('accepts the three operations', () => {
    assert.equal(decodeRequest(RemoteFrame.request, json({ op: 'list' })).op, 'list')
    const logs = decodeRequest(
      RemoteFrame.request,
      json({ op: 'logs', container: 'web', follow: true, tail: 3 }),
    )
    assert.deepEqual(logs, { op: 'logs', container: 'web', follow: true, tail: 3 })
    const exec = decodeRequest(
      RemoteFrame.request,
      json({ op: 'exec', container: 'web', args: ['sh'], tty: true }),
    )
    assert.equal(exec.op, 'exec')
  })

  it('refuses garbage with one sentence', () => {
    const bad = (type: number, payload: Uint8Array, re: RegExp) =>
      assert.throws(
        () => decodeRequest(type, payload),
        (err) => isKm1sError(err) && err.code === 'ERR_BAD_FRAME' && re.test(err.message),
      )
    bad(RemoteFrame.stdin, json({ op: 'list' }), /first frame must be a request/)
    bad(RemoteFrame.request, Buffer.from('{nope'), /not JSON/)
    bad(RemoteFrame.request, json({ op: 'rm', container: 'web' }), /Invalid/)
    bad(RemoteFrame.request, json({ op: 'logs', container: 'Web!' }), /Invalid container/)
    bad(RemoteFrame.request, json({ op: 'logs', container: 'web', extra: 1 }), /Invalid/)
    bad(RemoteFrame.request, json({ op: 'exec', container: 'web', args: [], tty: false }), /Invalid args/)
    bad(RemoteFrame.request, Buffer.alloc(MAX_REQUEST_BYTES + 1, 32), /over the/)
  })
})

interface FakeRuntime extends Runtime {
  pulled: number
  followersAborted: number
}

function status(name: string): ContainerStatus {
  return {
    name,
    state: 'running',
    ip: null,
    processes: [{ name: 'main', state: 'running', pid: 1, restarts: 0, lastExit: null, nextStartAt: null }],
    error: null,
    createdAt: new Date(0).toISOString(),
  }
}

function fakeRuntime(containers: string[]): FakeRuntime {
  const rt: FakeRuntime = {
    kind: 'process',
    pulled: 0,
    followersAborted: 0,
    start: async () => {},
    onChange: () => () => {},
    stop: async () => {},
    create: async () => {
      throw new Error('no')
    },
    remove: async () => {},
    list: () => containers.map(status),
    get: (name) => (containers.includes(name) ? status(name) : undefined),
    logs: (name: string, q: LogQuery) =>
      (async function* (): AsyncGenerator<LogEntry> {
        const line = (i: number): LogEntry => ({
          time: new Date(i).toISOString(),
          process: 'main',
          stream: 'stdout',
          line: `${name} line ${i} ${'x'.repeat(200)}`,
        })
        for (let i = 0; i < 3; i++) {
          rt.pulled++
          yield line(i)
        }
        if (!q.follow) return
        // Following: as fast as the reader takes them, until the signal aborts.
        for (let i = 3; !q.signal?.aborted; i++) {
          rt.pulled++
          yield line(i)
          if (i % 64 === 0) await new Promise((r) => setImmediate(r))
        }
        rt.followersAborted++
      })(),
    prepareExec: async (req) => ({
      argv: req.args,
      env: { PATH: '/usr/local/bin:/usr/bin:/bin', ...req.env },
      cwd: '/',
      pidFile: null,
      cleanup: async () => {},
    }),
  }
  return rt
}

function member(node: Libp2p, name: string, self: boolean, state: Member['state'] = 'alive'): Member {
  return {
    id: node.peerId.toString(),
    self,
    state,
    lastHeard: Date.now(),
    info: {
      name,
      arch: 'amd64',
      cpus: 1,
      memory: 1,
      version: '0',
      addresses: [],
      startedAt: 0,
      wgPublicKey: null,
    },
  }
}

const node = () =>
  createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
  })

describe('remote between two nodes', () => {
  let a: Libp2p
  let b: Libp2p
  let remoteA: Remote
  let remoteB: Remote
  let runtimeB: FakeRuntime
  const statusKeys: string[] = []
  let dead: Member

  before(async () => {
    a = await node()
    b = await node()
    const ghost = await node()
    dead = member(ghost, 'ghost', false, 'dead')
    await ghost.stop()
    await a.peerStore.merge(b.peerId, { multiaddrs: b.getMultiaddrs() })
    runtimeB = fakeRuntime(['web', 'api'])
    const members = () => [member(a, 'a', true), member(b, 'b', false), dead]
    remoteA = new Remote({
      libp2p: a,
      self: a.peerId.toString(),
      runtime: fakeRuntime([]),
      statusKeys: () => statusKeys,
      members,
      logger: log,
    })
    remoteB = new Remote({
      libp2p: b,
      self: b.peerId.toString(),
      runtime: runtimeB,
      statusKeys: () => [],
      members: () => [member(b, 'b', true), member(a, 'a', false)],
      logger: log,
    })
    await remoteA.start()
    await remoteB.start()
  })

  after(async () => {
    await remoteA?.stop()
    await remoteB?.stop()
    await a?.stop()
    await b?.stop()
  })

  it('goes straight to the node a status record names (one request, no search)', async () => {
    statusKeys.push(`status/${b.peerId.toString()}/api`)
    const served = remoteB.stats().served
    const lines: string[] = []
    for await (const e of await remoteA.logs({ container: 'api' }, new AbortController().signal))
      lines.push(e.line)
    assert.equal(lines.length, 3)
    assert.equal(remoteB.stats().served, served + 1)
  })

  it('finds a container by asking every live peer, and lists every node', async () => {
    const where = await remoteA.locate('web')
    assert.equal(where.node, 'b')
    assert.equal(where.containers[0]?.name, 'web')
    const all = await remoteA.containers()
    assert.deepEqual(
      all.map((n) => [n.node, n.containers.map((c) => c.name), n.error === null]),
      [
        ['a', [], true],
        ['b', ['web', 'api'], true],
        ['ghost', [], false],
      ],
    )
  })

  it('reads logs, then follows until the reader leaves; both ends close', async () => {
    const ac = new AbortController()
    const lines: string[] = []
    for await (const e of await remoteA.logs({ container: 'web' }, ac.signal)) lines.push(e.line.slice(0, 16))
    assert.deepEqual(lines, ['web line 0 xxxxx', 'web line 1 xxxxx', 'web line 2 xxxxx'])
    const before = runtimeB.followersAborted
    const follow = await remoteA.logs({ container: 'web', follow: true }, ac.signal)
    let n = 0
    for await (const _ of follow) if (++n === 1000) ac.abort()
    await until('the follower on b to stop', () => runtimeB.followersAborted === before + 1)
    await until('no open streams', () => remoteA.stats().open === 0 && remoteB.stats().open === 0)
  })

  it('holds back a follower whose reader does not read (bounded by the stream window)', async (t) => {
    const ac = new AbortController()
    const start = runtimeB.pulled
    const it = (await remoteA.logs({ container: 'web', follow: true }, ac.signal))[Symbol.asyncIterator]()
    t.after(() => ac.abort())
    await it.next()
    // Wait until the agent stops pulling (however loaded the machine is), then check it stays stopped.
    let last = -1
    let same = 0
    await until(
      'the serving agent to stop pulling',
      () => {
        const now = runtimeB.pulled
        same = now === last ? same + 1 : 0
        last = now
        return same >= 2
      },
      20_000,
      300,
    )
    const pulled = runtimeB.pulled - start
    await new Promise((r) => setTimeout(r, 500))
    // ~300-byte entries: what the stream's window, the paused read buffer and the reader's queue hold
    // (measured ~3 500, about 1 MiB), then the agent stops pulling.
    assert.equal(runtimeB.pulled - start, pulled, 'the agent kept pulling entries nobody read')
    assert.ok(
      pulled * 300 < 2 * READ_BUFFER_BYTES,
      `the agent pulled ${pulled} entries for a reader that took one`,
    )
    ac.abort()
    await it.return?.()
    await until('no open streams', () => remoteA.stats().open === 0 && remoteB.stats().open === 0)
  })

  it('runs a command with its status and stdin', async () => {
    const s = await remoteA.exec({ container: 'web', args: ['/bin/sh', '-c', 'echo hi; exit 3'], tty: false })
    let out = ''
    s.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    s.stdin.end()
    assert.deepEqual(await s.exited, { code: 3, signal: null })
    assert.equal(out, 'hi\n')
    const cat = await remoteA.exec({ container: 'web', args: ['/bin/cat'], tty: false })
    let echoed = ''
    cat.stdout.on('data', (d: Buffer) => {
      echoed += d.toString()
    })
    const big = 'y'.repeat(300_000)
    cat.stdin.end(big)
    assert.deepEqual(await cat.exited, { code: 0, signal: null })
    assert.equal(echoed.length, big.length)
  })

  it('kills the remote program when the asking side leaves', async () => {
    const s = await remoteA.exec({ container: 'web', args: ['/bin/sleep', '30'], tty: false })
    await until('the stream to be open on b', () => remoteB.stats().open === 1, 2_000).catch((err) => {
      throw new Error(`${err.message}: ${JSON.stringify([remoteA.stats(), remoteB.stats()])}`)
    })
    s.kill('SIGKILL')
    await assert.rejects(s.exited, /ended here/)
    await until('no open streams', () => remoteA.stats().open === 0 && remoteB.stats().open === 0)
  })

  it('says clearly when a container is nowhere, or on a node that cannot be reached', async () => {
    const t0 = Date.now()
    await assert.rejects(remoteA.logs({ container: 'nope' }, new AbortController().signal), (err) => {
      assert.ok(isKm1sError(err) && err.code === 'ERR_NOT_FOUND', String(err))
      assert.match(err.message, /There is no container named nope on any node/)
      return true
    })
    assert.ok(Date.now() - t0 < 4_000)
    await assert.rejects(
      remoteA.exec({ container: 'web', args: ['true'], tty: false, process: 'side' }),
      /no process named side/,
    )
    statusKeys.push(`status/${dead.id}/gone`)
    await assert.rejects(remoteA.logs({ container: 'gone' }, new AbortController().signal), (err) => {
      assert.ok(isKm1sError(err) && err.code === 'ERR_NODE_UNREACHABLE', String(err))
      assert.match(err.message, /Container gone is on node ghost, which cannot be reached/)
      return true
    })
  })

  /** Raw frames to b's protocol; resolves with the frames b sent back until it closed. */
  async function raw(bytes: Buffer): Promise<Array<{ type: number; payload: string }>> {
    const stream = await a.dialProtocol(b.peerId, REMOTE_PROTOCOL)
    const decoder = new FrameDecoder()
    const got: Array<{ type: number; payload: string }> = []
    stream.send(bytes)
    for await (const chunk of stream) {
      for (const f of decoder.push(Buffer.from(chunk.subarray())))
        got.push({ type: f.type, payload: f.payload.toString() })
    }
    await stream.close().catch(() => {})
    return got
  }

  it('answers garbage and oversized frames with an error frame and a counter, and carries on', async () => {
    const before = remoteB.stats().badFrames
    const oversized = Buffer.alloc(5)
    oversized.writeUInt8(RemoteFrame.request, 0)
    oversized.writeUInt32BE(100 * 1024 * 1024, 1)
    for (const bytes of [
      oversized,
      encodeFrame(RemoteFrame.request, '{not json'),
      encodeFrame(RemoteFrame.stdin, 'hello'),
      encodeFrame(RemoteFrame.request, JSON.stringify({ op: 'list', container: 'x'.repeat(100) })),
    ]) {
      const got = await raw(bytes)
      assert.equal(got.length, 1, JSON.stringify(got))
      assert.equal(got[0]?.type, RemoteFrame.error)
      assert.match(JSON.parse(got[0]?.payload ?? '{}').code, /ERR_BAD_FRAME/)
    }
    // A bad frame in the middle of an exec session ends it the same way.
    const exec = Buffer.concat([
      encodeFrame(
        RemoteFrame.request,
        JSON.stringify({ op: 'exec', container: 'web', args: ['/bin/cat'], tty: false }),
      ),
      encodeFrame(42, 'x'),
    ])
    const got = await raw(exec)
    assert.deepEqual(
      got.map((f) => f.type),
      [RemoteFrame.ready, RemoteFrame.error],
    )
    assert.equal(remoteB.stats().badFrames, before + 5)
    const list = await remoteA.containers()
    assert.equal(list.find((n) => n.node === 'b')?.containers.length, 2)
  })
})
