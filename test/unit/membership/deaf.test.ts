// Membership hangs up a connection to a member it has not heard on for three dead-times, once a period,
// and never a fresh connection or one to a peer that is not a member.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { fakeBus, info, tempStore, testMembership } from './fixtures.ts'

describe('membership: deaf connections', () => {
  it('hangs up a connection that carried no heartbeat for three dead-times, once a period', async () => {
    const [selfKey, memberKey, strangerKey] = await Promise.all(
      [0, 1, 2].map(() => generateKeyPair('Ed25519')),
    )
    const self = peerIdFromPrivateKey(selfKey as never)
    const member = peerIdFromPrivateKey(memberKey as never)
    const stranger = peerIdFromPrivateKey(strangerKey as never)
    let now = 1_700_000_000_000
    const store = await tempStore(memberKey as never, () => now)
    // The member's own record, as replication would have brought it.
    await store.put(`node/${member.toString()}`, info('n2'))
    const hungUp: string[] = []
    const conns = [
      { remotePeer: member, timeline: { open: now } },
      { remotePeer: stranger, timeline: { open: now } },
    ]
    const bus = fakeBus()
    const m = testMembership({
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
    }
  })
})
