// Heartbeats carry the fingerprint of the sender's state digest, and membership says whether a peer holds
// the same records as this node: what lets replication skip the periodic session (state/replication.ts).
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { decodeHeartbeat, encodeHeartbeat, HEARTBEAT_TOPIC } from '../../../src/membership/messages.ts'
import { DIGEST_QUIET_MS } from '../../../src/state/store.ts'
import { fakeBus, tempStore, testMembership } from './fixtures.ts'

describe('membership: digest fingerprints on heartbeats', () => {
  it("sends this node's fingerprint once its store is quiet, and is in sync only with a peer just heard carrying it", async () => {
    const [selfKey, peerKey] = await Promise.all([0, 1].map(() => generateKeyPair('Ed25519')))
    const self = peerIdFromPrivateKey(selfKey as never)
    const peer = peerIdFromPrivateKey(peerKey as never)
    let now = 1_700_000_000_000
    const store = await tempStore(selfKey as never, () => now)
    const bus = fakeBus()
    const m = testMembership({
      self,
      bus,
      connections: { addEventListener() {}, removeEventListener() {} },
      store,
      now: () => now,
    })
    await m.start()
    try {
      const sent = () => decodeHeartbeat(bus.published.at(-1) ?? new Uint8Array())
      assert.equal(sent()?.fp, undefined, 'the store just took this node record: no fingerprint yet')
      now += DIGEST_QUIET_MS
      const beats = bus.published.length
      while (bus.published.length === beats) await new Promise((r) => setTimeout(r, 50))
      const mine = store.fingerprint()
      assert.ok(mine)
      assert.equal(sent()?.fp, mine)

      const validate = bus.topicValidators.get(HEARTBEAT_TOPIC)
      assert.ok(validate)
      let seq = 0
      const hear = (from: PeerId, fp?: string, id = from.toString()) =>
        validate(from, {
          type: 'unsigned',
          topic: HEARTBEAT_TOPIC,
          data: encodeHeartbeat({ v: 1, id, seq: seq++, ...(fp ? { fp } : {}) }),
        })
      const id = peer.toString()
      assert.equal(m.inSyncWith(id), false, 'never heard')
      await hear(peer, mine)
      assert.equal(m.inSyncWith(id), true)
      now += 2_999
      assert.equal(m.inSyncWith(id), true)
      now += 1
      assert.equal(m.inSyncWith(id), false, 'not heard within the suspect time')
      await hear(peer, 'AAAAAAAAAAA')
      assert.equal(m.inSyncWith(id), false, 'another digest')
      await hear(peer, mine)
      await hear(peer)
      assert.equal(m.inSyncWith(id), false, 'its store is changing: no fingerprint')
      await hear(peer, mine, self.toString())
      assert.equal(m.inSyncWith(id), false, 'a heartbeat that speaks for another node counts for nothing')
      await hear(peer, mine)
      await store.put(`label/${self.toString()}`, { zone: 'a' })
      assert.equal(m.inSyncWith(id), false, 'this store is changing')
      now += DIGEST_QUIET_MS
      assert.equal(m.inSyncWith(id), false, 'this store now holds a record the peer does not')
    } finally {
      m.stop()
    }
  })

  it('refuses a fingerprint that is empty or too long', () => {
    const hb = { v: 1 as const, id: '12D3KooWA', seq: 1 }
    assert.equal(decodeHeartbeat(encodeHeartbeat({ ...hb, fp: 'abcdefghijk' }))?.fp, 'abcdefghijk')
    assert.equal(decodeHeartbeat(encodeHeartbeat({ ...hb, fp: '' })), undefined)
    assert.equal(decodeHeartbeat(encodeHeartbeat({ ...hb, fp: 'x'.repeat(33) })), undefined)
  })
})
