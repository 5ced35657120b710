import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import {
  DEFAULT_DETECTOR as D,
  lastHeardAfterDisconnect,
  memberState,
} from '../../../src/membership/detector.ts'
import { decodeHeartbeat, encodeHeartbeat, MAX_HEARTBEAT_BYTES } from '../../../src/membership/messages.ts'

describe('failure detector', () => {
  it('is alive, then suspect after 3 s, then dead after 5 s of silence', () => {
    assert.equal(memberState(1_000, 1_000, D), 'alive')
    assert.equal(memberState(3_999, 1_000, D), 'alive')
    assert.equal(memberState(4_000, 1_000, D), 'suspect')
    assert.equal(memberState(6_000, 1_000, D), 'dead')
  })

  it('never goes back from dead to alive as time passes', () => {
    fc.assert(
      fc.property(fc.nat(1e9), fc.nat(1e6), fc.nat(1e6), (heard, d1, d2) => {
        const order = { alive: 0, suspect: 1, dead: 2 }
        assert.ok(order[memberState(heard + d1, heard, D)] <= order[memberState(heard + d1 + d2, heard, D)])
      }),
    )
  })

  it('makes a disconnected peer suspect at once', () => {
    assert.equal(memberState(10_000, lastHeardAfterDisconnect(10_000, 9_900, D), D), 'suspect')
  })
})

describe('heartbeat messages', () => {
  it('round-trips', () => {
    assert.deepEqual(decodeHeartbeat(encodeHeartbeat({ v: 1, id: 'p', seq: 3 })), { v: 1, id: 'p', seq: 3 })
  })

  it('drops garbage, wrong shapes, extra fields and oversized messages', () => {
    const enc = (x: unknown) => new TextEncoder().encode(JSON.stringify(x))
    assert.equal(decodeHeartbeat(new Uint8Array([0xff, 0x00, 0x13])), undefined)
    assert.equal(decodeHeartbeat(enc({ v: 2, id: 'p', seq: 1 })), undefined)
    assert.equal(decodeHeartbeat(enc({ v: 1, id: 'p', seq: -1 })), undefined)
    assert.equal(decodeHeartbeat(enc({ v: 1, id: 'p', seq: 1, name: 'evil' })), undefined)
    assert.equal(decodeHeartbeat(enc({ v: 1, id: '', seq: 1 })), undefined)
    assert.equal(decodeHeartbeat(new Uint8Array(MAX_HEARTBEAT_BYTES + 1).fill(32)), undefined)
  })
})
