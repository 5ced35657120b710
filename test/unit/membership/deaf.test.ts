// Membership hangs up a connection to a member it has not heard on for three dead-times, once a period,
// and never a fresh connection or one to a peer that is not a member.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { Level } from 'level'
import { pino } from 'pino'
import { type HeartbeatBus, Membership } from '../../../src/membership/membership.ts'
import { type NodeValue, Store, type WireRecord } from '../../../src/state/index.ts'

const silent = pino({ level: 'silent' })
const dirs: string[] = []
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

const info = (name: string): NodeValue => ({
  name,
  arch: 'amd64',
  cpus: 2,
  memory: 1 << 30,
  version: '0.1.0',
  addresses: [],
  startedAt: 1,
  wgPublicKey: null,
})

describe('membership: deaf connections', () => {
  it('hangs up a connection that carried no heartbeat for three dead-times, once a period', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'km1s-deaf-'))
    dirs.push(dir)
    const db = new Level<string, unknown>(dir, { valueEncoding: 'json' })
    await db.open()
    const [selfKey, memberKey, strangerKey] = await Promise.all(
      [0, 1, 2].map(() => generateKeyPair('Ed25519')),
    )
    const self = peerIdFromPrivateKey(selfKey as never)
    const member = peerIdFromPrivateKey(memberKey as never)
    const stranger = peerIdFromPrivateKey(strangerKey as never)
    let now = 1_700_000_000_000
    const store = new Store({
      records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
      meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
      privateKey: memberKey as never,
      logger: silent,
      now: () => now,
    })
    await store.load()
    // The member's own record, as replication would have brought it.
    await store.put(`node/${member.toString()}`, info('n2'))
    const hungUp: string[] = []
    const conns = [
      { remotePeer: member, timeline: { open: now } },
      { remotePeer: stranger, timeline: { open: now } },
    ]
    const bus = {
      subscribe() {},
      unsubscribe() {},
      publish: async () => ({ recipients: [] }),
      addEventListener() {},
      removeEventListener() {},
      topicValidators: new Map(),
    } as unknown as HeartbeatBus
    const m = new Membership({
      self,
      bus,
      connections: {
        addEventListener() {},
        removeEventListener() {},
        getConnections: () => conns as never,
        hangUp: async (p: PeerId) => {
          hungUp.push(p.toString())
        },
      } as never,
      store,
      selfInfo: () => info('n1'),
      logger: silent,
      detector: { suspectMs: 3_000, deadMs: 5_000 },
      now: () => now,
    })
    await m.start()
    try {
      // Fresh: left alone.
      now += 10_000
      await new Promise((r) => setTimeout(r, 1_100))
      assert.deepEqual(hungUp, [])
      // Silent for over three dead-times on an old connection: hung up once, the stranger never.
      now += 6_000
      await new Promise((r) => setTimeout(r, 1_100))
      assert.deepEqual(hungUp, [member.toString()])
      await new Promise((r) => setTimeout(r, 1_100))
      assert.deepEqual(hungUp, [member.toString()], 'not again within the period')
      assert.equal(m.stats().deafReconnects, 1)
    } finally {
      m.stop()
      await store.stop()
      await db.close()
    }
  })
})
