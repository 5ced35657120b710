import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { normalizeWorkload } from '../../../src/scheduler/workload.ts'
import { chooseIp, claimWins, homeIndex, ipAt, planServices } from '../../../src/services/allocate.ts'
import { ServiceValue, type WorkloadValue } from '../../../src/state/record.ts'

const wl = (name: string, service: string | null, extra: Record<string, unknown> = {}): WorkloadValue =>
  normalizeWorkload({ name, command: ['/bin/true'], ports: [8080], service, ...extra })

describe('service IPs', () => {
  it('are in 10.43.0.0/16, never the network or broadcast address, and depend on the name only', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/), (name) => {
        const ip = chooseIp(name, new Set()) as string
        assert.match(ip, /^10\.43\.\d+\.\d+$/)
        assert.notEqual(ip, '10.43.0.0')
        assert.notEqual(ip, '10.43.255.255')
        assert.equal(chooseIp(name, new Set()), ip)
      }),
    )
  })

  it('probe past taken IPs, wrapping around', () => {
    const home = homeIndex('web')
    const taken = new Set([ipAt(home), ipAt((home + 1) % 65536)])
    const ip = chooseIp('web', taken) as string
    assert.ok(!taken.has(ip))
    assert.equal(ip, ipAt((home + 2) % 65536))
  })

  it('the tie-break is a strict order: exactly one of two claims wins', () => {
    fc.assert(
      fc.property(
        fc.record({ name: fc.string(), claimedAt: fc.nat(10) }),
        fc.record({ name: fc.string(), claimedAt: fc.nat(10) }),
        (a, b) => {
          fc.pre(a.name !== b.name)
          assert.notEqual(claimWins(a, b), claimWins(b, a))
        },
      ),
    )
  })
})

describe('planServices', () => {
  it('makes a record per service with the workload, ports and an IP; a headless one has no IP', () => {
    const plan = planServices(
      [wl('web', 'web'), wl('db', 'db', { headless: true }), wl('x', null)],
      new Map(),
      7,
    )
    assert.deepEqual([...plan.put.keys()].sort(), ['db', 'web'])
    const web = plan.put.get('web') as ServiceValue
    assert.equal(ServiceValue.safeParse(web).success, true)
    assert.deepEqual(
      { ...web, ip: 'x' },
      { ip: 'x', workload: 'web', headless: false, ports: [8080], claimedAt: 7 },
    )
    assert.equal(plan.put.get('db')?.ip, null)
    assert.deepEqual(plan.remove, [])
  })

  it('writes nothing when the records are as wanted, and removes a service no workload names', () => {
    const first = planServices([wl('web', 'web')], new Map(), 1)
    const stored = new Map<string, unknown>([
      ...first.put,
      ['old', { ...first.put.get('web'), ip: '10.43.9.9' }],
    ])
    const again = planServices([wl('web', 'web')], stored, 2)
    assert.equal(again.put.size, 0)
    assert.deepEqual(again.remove, ['old'])
  })

  it('follows a port change without moving the IP', () => {
    const first = planServices([wl('web', 'web')], new Map(), 1)
    const next = planServices([wl('web', 'web', { ports: [80, 8080] })], first.put, 5)
    assert.equal(next.put.get('web')?.ip, first.put.get('web')?.ip)
    assert.deepEqual(next.put.get('web')?.ports, [80, 8080])
    assert.equal(next.put.get('web')?.claimedAt, 1)
  })

  it('two services on one IP after a split: exactly the loser moves, and the plan is then stable', () => {
    fc.assert(
      fc.property(fc.nat(1000), fc.nat(1000), fc.boolean(), (ta, tb, reverse) => {
        const ip = '10.43.7.7'
        const stored = new Map<string, unknown>([
          ['alpha', { ip, workload: 'a', headless: false, ports: [8080], claimedAt: ta }],
          ['beta', { ip, workload: 'b', headless: false, ports: [8080], claimedAt: tb }],
        ])
        const ws = [wl('a', 'alpha'), wl('b', 'beta')]
        const plan = planServices(reverse ? ws.reverse() : ws, stored, 2000)
        assert.equal(plan.put.size, 1)
        const winner = claimWins({ name: 'alpha', claimedAt: ta }, { name: 'beta', claimedAt: tb })
          ? 'alpha'
          : 'beta'
        const [moved, value] = [...plan.put][0] as [string, ServiceValue]
        assert.notEqual(moved, winner)
        assert.notEqual(value.ip, ip)
        const settled = new Map([...stored, ...plan.put])
        assert.equal(planServices(ws, settled, 3000).put.size, 0)
      }),
    )
  })

  it('the same records in any order give the same plan (every node writes the same values)', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.stringMatching(/^[a-z]{1,6}$/), { minLength: 1, maxLength: 8 }),
        (names) => {
          const ws = names.map((n) => wl(n, `s-${n}`))
          const a = planServices(ws, new Map(), 1)
          const b = planServices([...ws].reverse(), new Map(), 1)
          assert.deepEqual([...a.put].sort(), [...b.put].sort())
          assert.equal(new Set([...a.put.values()].map((v) => v.ip)).size, names.length, 'distinct IPs')
        },
      ),
    )
  })

  it('two workloads naming one service: the smaller workload name has it', () => {
    const plan = planServices([wl('zeta', 'web'), wl('alpha', 'web')], new Map(), 1)
    assert.equal(plan.put.get('web')?.workload, 'alpha')
  })
})
