// When replication starts a session with a new peer: when the peer's subscription arrives (at once), and at
// connect only as a fallback, CONNECT_SYNC_MS later, if no session has run by then.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { PeerId } from '@libp2p/interface'
import { createLogger } from '../../../src/common/logger.ts'
import {
  Replication,
  type ReplicationInit,
  STATE_TOPIC,
  startsRound,
} from '../../../src/state/replication.ts'
import type { Store } from '../../../src/state/store.ts'
import { NO_ROUNDS_MS } from '../membership/fixtures.ts'
import { untilWithin } from '../until.ts'

const until = untilWithin(2_000)

function fakePeer(id: string): PeerId {
  return { toString: () => id, equals: (o: unknown) => String(o) === id } as unknown as PeerId
}

/** Long enough that a loaded machine does not reach it between a connect and the test's first look. */
const CONNECT_SYNC_MS = 150

function setup(syncIntervalMs?: number, inSync?: (peer: string) => boolean) {
  const peers: PeerId[] = []
  const dials: string[] = []
  const libp2p = Object.assign(new EventTarget(), {
    peerId: fakePeer('m'),
    handle: async () => {},
    unhandle: async () => {},
    getPeers: () => peers,
    // A dial that fails at once: the session counts as not run, and is retried only after 500 ms.
    dialProtocol: async (peer: PeerId) => {
      dials.push(peer.toString())
      throw new Error('no stream in this test')
    },
  })
  const pubsub = Object.assign(new EventTarget(), {
    subscribe: () => {},
    unsubscribe: () => {},
    publish: async () => ({ recipients: [] }),
    topicValidators: new Map(),
  })
  const store = { onChange: () => () => {} } as unknown as Store
  const replication = new Replication({
    store,
    libp2p: libp2p as unknown as ReplicationInit['libp2p'],
    pubsub: pubsub as unknown as ReplicationInit['pubsub'],
    logger: createLogger({ level: 'silent' }),
    connectSyncMs: CONNECT_SYNC_MS,
    syncIntervalMs: syncIntervalMs ?? NO_ROUNDS_MS,
    ...(inSync ? { inSync } : {}),
  })
  return { libp2p, pubsub, replication, dials, peers }
}

/** What gossipsub emits when `peer`'s subscription to `topic` arrives. */
function subscribed(pubsub: EventTarget, peer: PeerId, topic: string): void {
  pubsub.dispatchEvent(
    new CustomEvent('subscription-change', {
      detail: { peerId: peer, subscriptions: [{ topic, subscribe: true }] },
    }),
  )
}

/** A started replication that `id` has just connected to. */
async function connected(id: string) {
  const peer = fakePeer(id)
  const t = setup()
  await t.replication.start()
  t.peers.push(peer)
  const connectedAt = performance.now()
  t.libp2p.dispatchEvent(new CustomEvent('peer:connect', { detail: peer }))
  return { ...t, peer, connectedAt }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('replication: sessions with a new peer', () => {
  it('a connection alone gets its session only after the fallback delay', async () => {
    const { replication, dials, connectedAt } = await connected('peer-a')
    try {
      await sleep(20)
      assert.deepEqual(dials, [], 'no session at connect')
      await until('the fallback session', () => dials.length > 0)
      assert.ok(performance.now() - connectedAt >= CONNECT_SYNC_MS - 1, 'not before the fallback delay')
      await sleep(50)
      assert.deepEqual(dials, ['peer-a'], 'one session after the fallback delay')
    } finally {
      await replication.stop()
    }
  })

  it("the peer's subscription starts a session at once", async () => {
    const { pubsub, replication, dials, peer } = await connected('peer-b')
    try {
      subscribed(pubsub, peer, STATE_TOPIC)
      assert.deepEqual(dials, ['peer-b'])
      // The session failed, so the fallback still runs one: a failed session is no session.
      await until('the fallback session', () => dials.length > 1)
      assert.deepEqual(dials, ['peer-b', 'peer-b'])
    } finally {
      await replication.stop()
    }
  })

  it('other topics start nothing, and a stopped replication dials nobody', async () => {
    const { pubsub, replication, dials, peer } = await connected('peer-c')
    subscribed(pubsub, peer, 'other')
    await replication.stop()
    await sleep(100)
    assert.deepEqual(dials, [])
  })

  it('the periodic round: only the side with the smaller peer id starts the session', async () => {
    const t = setup(40)
    await t.replication.start()
    t.peers.push(fakePeer('a'), fakePeer('z'))
    try {
      for (let i = 0; i < 50 && !t.dials.includes('z'); i++) await sleep(20)
      await sleep(100) // a few more rounds
      assert.ok(t.dials.includes('z'), 'm < z: this node starts it')
      assert.ok(!t.dials.includes('a'), 'a < m: the peer starts it')
    } finally {
      await t.replication.stop()
    }
  })
  it('the periodic round skips a peer that is in sync, and runs again once it is not', async () => {
    let same = true
    const t = setup(40, (peer) => peer === 'z' && same)
    await t.replication.start()
    t.peers.push(fakePeer('y'), fakePeer('z'))
    try {
      for (let i = 0; i < 50 && t.replication.stats().roundsSkipped < 3; i++) await sleep(20)
      assert.ok(t.replication.stats().roundsSkipped >= 3)
      assert.ok(t.dials.includes('y'), 'a peer not known to be in sync gets its session')
      assert.ok(!t.dials.includes('z'))
      same = false
      for (let i = 0; i < 50 && !t.dials.includes('z'); i++) await sleep(20)
      assert.ok(t.dials.includes('z'))
    } finally {
      await t.replication.stop()
    }
  })

  it('orders by the peer id string', () => {
    assert.equal(startsRound('12D3KooWA', '12D3KooWB'), true)
    assert.equal(startsRound('12D3KooWB', '12D3KooWA'), false)
  })
})
