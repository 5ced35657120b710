import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import dns2 from 'dns2'
import fc from 'fast-check'
import { encodeResponse, parseQuery, RCODE, TYPE } from '../../../src/dns/wire.ts'
import { answer, buildZone, nodeAddresses, type ZoneRecord } from '../../../src/dns/zone.ts'

const { Packet } = dns2
const P1 = `12D3KooW${'A'.repeat(44)}`
const P2 = `12D3KooW${'B'.repeat(44)}`

const records: ZoneRecord[] = [
  {
    key: `node/${P1}`,
    value: { name: 'n1', addresses: ['/ip4/127.0.0.1/tcp/4100', '/ip4/198.18.0.11/tcp/4100'] },
    deleted: false,
  },
  { key: `node/${P2}`, value: { name: 'n2', addresses: ['/ip4/198.18.0.12/tcp/4100'] }, deleted: false },
  {
    key: `status/${P1}/web-0`,
    value: { workload: 'web', ip: '10.42.1.2', state: 'running' },
    deleted: false,
  },
  {
    key: `status/${P2}/web-1`,
    value: { workload: 'web', ip: '10.42.2.2', state: 'running' },
    deleted: false,
  },
  {
    key: `status/${P2}/web-2`,
    value: { workload: 'web', ip: '10.42.2.3', state: 'running', healthy: false },
    deleted: false,
  },
  { key: `status/${P2}/db-0`, value: { workload: 'db', ip: '10.42.2.4', state: 'exited' }, deleted: false },
  { key: 'service/web', value: { ip: '10.43.0.10', workload: 'web', ports: [8080] }, deleted: false },
  {
    key: 'service/peers',
    value: { workload: 'web', headless: true, ports: [{ port: 7000 }] },
    deleted: false,
  },
  { key: 'service/gone', value: { ip: '10.43.0.11' }, deleted: true },
  { key: 'service/bad', value: { ip: 'not an ip' }, deleted: false },
]

function ask(name: string, type: number = TYPE.A, recs = records, random = (_n: number) => 0) {
  const p = new Packet()
  p.header.id = 1
  p.questions.push(new Packet.Question(name, type, Packet.CLASS.IN))
  const raw = p.toBuffer()
  const r = parseQuery(raw)
  assert.ok(r.ok)
  const a = answer(buildZone(recs), r.query, random)
  if (a.kind === 'forward') return { forward: true as const }
  return Packet.parse(encodeResponse(raw, r.query, a.rcode, a.body, true))
}

function addresses(res: ReturnType<typeof ask>): string[] {
  assert.ok(!('forward' in res))
  return res.answers.map((a) => a.address as string)
}

describe('dns zone', () => {
  it('answers a service name with its virtual IP, and SRV with its port', () => {
    assert.deepEqual(addresses(ask('web.km1s.internal')), ['10.43.0.10'])
    const srv = ask('_8080._tcp.web.km1s.internal', TYPE.SRV)
    assert.ok(!('forward' in srv))
    assert.deepEqual(
      srv.answers.map((a) => [a.target, a.port]),
      [['web.km1s.internal', 8080]],
    )
  })

  it('answers a headless service with every healthy running replica', () => {
    assert.deepEqual(addresses(ask('peers.km1s.internal')).sort(), ['10.42.1.2', '10.42.2.2'])
    const srv = ask('_7000._tcp.peers.km1s.internal', TYPE.SRV)
    assert.ok(!('forward' in srv))
    assert.deepEqual(srv.answers.map((a) => a.target).sort(), [
      'web-0.ctr.km1s.internal',
      'web-1.ctr.km1s.internal',
    ])
    assert.deepEqual(srv.additionals.map((a) => a.address).sort(), ['10.42.1.2', '10.42.2.2'])
  })

  it('shuffles headless answers with the random source it is given', () => {
    const first = addresses(ask('peers.km1s.internal', TYPE.A, records, () => 0))
    const second = addresses(ask('peers.km1s.internal', TYPE.A, records, (n) => n - 1))
    assert.notDeepEqual(first, second)
    assert.deepEqual([...first].sort(), [...second].sort())
  })

  it('answers nodes and containers, without loopback', () => {
    assert.deepEqual(addresses(ask('n1.node.km1s.internal')), ['198.18.0.11'])
    assert.deepEqual(addresses(ask('db-0.ctr.km1s.internal')), ['10.42.2.4'])
    assert.deepEqual(addresses(ask('WEB-1.ctr.KM1S.internal')), ['10.42.2.2'])
  })

  it('gives NXDOMAIN for unknown and deleted cluster names, NODATA for other types', () => {
    for (const name of ['nope.km1s.internal', 'gone.km1s.internal', 'bad.km1s.internal.km1s.internal']) {
      const r = ask(name)
      assert.ok(!('forward' in r))
      assert.equal(r.header.rcode, RCODE.NXDOMAIN, name)
    }
    const aaaa = ask('web.km1s.internal', TYPE.AAAA)
    assert.ok(!('forward' in aaaa))
    assert.equal(aaaa.header.rcode, RCODE.NOERROR)
    assert.equal(aaaa.answers.length, 0)
    const apex = ask('km1s.internal')
    assert.ok(!('forward' in apex))
    assert.equal(apex.header.rcode, RCODE.NOERROR)
  })

  it('refuses ANY and absurd names, forwards other names', () => {
    const any = ask('web.km1s.internal', TYPE.ANY)
    assert.ok(!('forward' in any))
    assert.equal(any.header.rcode, RCODE.REFUSED)
    assert.deepEqual(ask('example.org'), { forward: true })
    const absurd = ask('exa mple.org')
    assert.ok(!('forward' in absurd))
    assert.equal(absurd.header.rcode, RCODE.REFUSED)
  })

  it('is the same zone whatever order the records arrive in', () => {
    fc.assert(
      fc.property(fc.shuffledSubarray(records, { minLength: records.length }), (shuffled) => {
        for (const name of ['web.km1s.internal', 'n1.node.km1s.internal', 'web-1.ctr.km1s.internal']) {
          assert.deepEqual(addresses(ask(name, TYPE.A, shuffled)), addresses(ask(name)))
        }
        assert.deepEqual(buildZone(shuffled).stats, buildZone(records).stats)
      }),
      { numRuns: 50 },
    )
  })

  it('reads IPv4 addresses of multiaddrs', () => {
    assert.deepEqual(
      nodeAddresses([
        '/ip4/127.0.0.1/tcp/1',
        '/ip4/10.0.0.1/tcp/1',
        '/ip6/::1/tcp/1',
        '/ip4/10.0.0.1/udp/2',
        '/dns4/x/tcp/1',
      ]),
      ['10.0.0.1'],
    )
  })
})
