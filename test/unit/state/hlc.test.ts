import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import {
  compareHlc,
  decodeHlc,
  encodeHlc,
  type Hlc,
  MAX_COUNTER,
  MAX_DRIFT_MS,
  receive,
  tick,
  ZERO_HLC,
} from '../../../src/state/hlc.ts'

const arbHlc = fc.record({
  wall: fc.integer({ min: 0, max: 2 ** 45 }),
  counter: fc.integer({ min: 0, max: MAX_COUNTER }),
})
const arbEvent = fc.oneof(
  fc.record({ kind: fc.constant('tick' as const), dt: fc.integer({ min: -5_000, max: 5_000 }) }),
  fc.record({
    kind: fc.constant('receive' as const),
    dt: fc.integer({ min: -5_000, max: 5_000 }),
    remoteOffset: fc.integer({ min: -100_000, max: 50_000 }),
    counter: fc.integer({ min: 0, max: 1000 }),
  }),
)

describe('hybrid logical clock', () => {
  it('is strictly monotonic under any mix of tick and receive, even when the wall clock goes back', () => {
    fc.assert(
      fc.property(fc.array(arbEvent, { maxLength: 60 }), (events) => {
        let now = 1_700_000_000_000
        let clock: Hlc = ZERO_HLC
        for (const e of events) {
          now += e.dt
          let next: Hlc
          if (e.kind === 'tick') {
            next = tick(clock, now)
          } else {
            const remote = { wall: Math.max(0, now + e.remoteOffset), counter: e.counter }
            const r = receive(clock, remote, now)
            assert.ok(r.ok, 'a remote within the drift bound is accepted')
            next = r.hlc
            assert.ok(compareHlc(next, remote) > 0, 'after receive the clock is past the remote one')
          }
          assert.ok(compareHlc(next, clock) > 0)
          assert.ok(next.wall >= now, 'the clock never runs behind the wall clock')
          clock = next
        }
      }),
      { numRuns: 200 },
    )
  })

  it('refuses a remote clock more than the drift bound ahead, without throwing', () => {
    const now = 1_700_000_000_000
    const local = tick(ZERO_HLC, now)
    const r = receive(local, { wall: now + MAX_DRIFT_MS + 1, counter: 0 }, now)
    assert.deepEqual(r, { ok: false, reason: 'clock-drift', aheadMs: MAX_DRIFT_MS + 1 })
    assert.ok(receive(local, { wall: now + MAX_DRIFT_MS, counter: 0 }, now).ok)
    assert.equal(receive(local, { wall: now + 2_000, counter: 0 }, now, 1_000).ok, false)
  })

  it('tick at a standing wall clock counts up, and a full counter borrows a millisecond', () => {
    assert.deepEqual(tick({ wall: 10, counter: 4 }, 10), { wall: 10, counter: 5 })
    assert.deepEqual(tick({ wall: 10, counter: 4 }, 11), { wall: 11, counter: 0 })
    assert.deepEqual(tick({ wall: 10, counter: MAX_COUNTER }, 10), { wall: 11, counter: 0 })
  })

  it('encodes to a string whose order is the clock order, and decodes back', () => {
    fc.assert(
      fc.property(arbHlc, arbHlc, (a, b) => {
        const ea = encodeHlc(a)
        const eb = encodeHlc(b)
        assert.deepEqual(decodeHlc(ea), { wall: a.wall, counter: a.counter })
        assert.equal(Math.sign(compareHlc(a, b)), ea < eb ? -1 : ea > eb ? 1 : 0)
      }),
      { numRuns: 300 },
    )
  })

  it('decodes nothing but the exact encoding', () => {
    for (const bad of [
      '',
      '0',
      '00000000000a.00000',
      '00000000000A.000000',
      '00000000000a-000000',
      ' 00000000000a.000000',
    ])
      assert.equal(decodeHlc(bad), undefined, bad)
  })
})
