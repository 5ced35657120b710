import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import dns2 from 'dns2'
import fc from 'fast-check'
import {
  encodeBody,
  encodeError,
  encodeName,
  encodeResponse,
  isPlainName,
  parseQuery,
  RCODE,
  readAnswerTtls,
  TYPE,
} from '../../../src/dns/wire.ts'

const { Packet } = dns2

function query(name: string, type: number = TYPE.A, id = 0x1234): Buffer {
  const p = new Packet()
  p.header.id = id
  p.header.rd = 1
  p.questions.push(new Packet.Question(name, type, Packet.CLASS.IN))
  return p.toBuffer()
}

describe('dns wire', () => {
  it('parses a query as dns2 writes it, lower-casing the name', () => {
    const r = parseQuery(query('Web.KM1S.internal', TYPE.SRV, 7))
    assert.ok(r.ok)
    assert.equal(r.query.id, 7)
    assert.equal(r.query.name, 'web.km1s.internal')
    assert.equal(r.query.type, TYPE.SRV)
    assert.equal(r.query.klass, 1)
    assert.equal(r.query.rd, true)
  })

  it('never throws and never answers a response, whatever the bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        const r = parseQuery(Buffer.from(bytes))
        if (bytes.length >= 3 && (bytes[2] ?? 0) & 0x80) assert.ok(!r.ok && r.drop)
      }),
      { numRuns: 2000 },
    )
  })

  it('answers garbage after a header with FORMERR, and other opcodes with NOTIMP', () => {
    const header = Buffer.from([0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    const truncated = parseQuery(Buffer.concat([header, Buffer.from([5, 0x61, 0x62])]))
    assert.deepEqual(truncated, { ok: false, drop: false, id: 9, rd: true, rcode: RCODE.FORMERR })
    const pointer = parseQuery(Buffer.concat([header, Buffer.from([0xc0, 12, 0, 1, 0, 1])]))
    assert.ok(!pointer.ok && !pointer.drop && pointer.rcode === RCODE.FORMERR)
    const two = Buffer.from(query('a.b'))
    two[5] = 2
    const twoQuestions = parseQuery(two)
    assert.ok(!twoQuestions.ok && !twoQuestions.drop && twoQuestions.rcode === RCODE.FORMERR)
    const notify = Buffer.from(query('a.b'))
    notify[2] = (4 << 3) | 1
    const n = parseQuery(notify)
    assert.ok(!n.ok && !n.drop && n.rcode === RCODE.NOTIMP)
    assert.deepEqual(parseQuery(Buffer.alloc(11)), { ok: false, drop: true })
    assert.deepEqual(parseQuery(Buffer.alloc(5000)), { ok: false, drop: true })
  })

  it('refuses names longer than 255 bytes', () => {
    const label = Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)])
    const header = Buffer.from([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    const r = parseQuery(
      Buffer.concat([header, ...Array.from({ length: 5 }, () => label), Buffer.from([0, 0, 1, 0, 1])]),
    )
    assert.ok(!r.ok && !r.drop && r.rcode === RCODE.FORMERR)
  })

  it('encodes answers dns2 reads back, echoing the question as asked', () => {
    const raw = query('Web.km1s.internal', TYPE.A, 99)
    const r = parseQuery(raw)
    assert.ok(r.ok)
    const body = encodeBody('web.km1s.internal', [
      { name: 'web.km1s.internal', ttl: 5, data: { type: TYPE.A, address: '10.43.0.7' } },
      { name: 'web.km1s.internal', ttl: 5, data: { type: TYPE.A, address: '10.43.0.8' } },
    ])
    const out = Packet.parse(encodeResponse(raw, r.query, RCODE.NOERROR, body, true))
    assert.equal(out.header.id, 99)
    assert.equal(out.header.qr, 1)
    assert.equal(out.header.aa, 1)
    assert.equal(out.questions[0]?.name, 'Web.km1s.internal')
    assert.deepEqual(
      out.answers.map((a) => [a.name, a.address, a.ttl]),
      [
        ['Web.km1s.internal', '10.43.0.7', 5],
        ['Web.km1s.internal', '10.43.0.8', 5],
      ],
    )
  })

  it('encodes SRV answers with uncompressed targets and the targets’ addresses', () => {
    const name = '_8080._tcp.web.km1s.internal'
    const raw = query(name, TYPE.SRV)
    const r = parseQuery(raw)
    assert.ok(r.ok)
    const body = encodeBody(
      name,
      [{ name, ttl: 5, data: { type: TYPE.SRV, port: 8080, target: 'web.km1s.internal' } }],
      [{ name: 'web.km1s.internal', ttl: 5, data: { type: TYPE.A, address: '10.43.0.7' } }],
    )
    const out = Packet.parse(encodeResponse(raw, r.query, RCODE.NOERROR, body, true))
    assert.equal(out.answers[0]?.port, 8080)
    assert.equal(out.answers[0]?.target, 'web.km1s.internal')
    assert.equal(out.additionals[0]?.address, '10.43.0.7')
  })

  it('encodes errors and names', () => {
    const e = Packet.parse(encodeError(3, true, RCODE.FORMERR))
    assert.equal(e.header.id, 3)
    assert.equal(e.header.rcode, RCODE.FORMERR)
    assert.deepEqual([...encodeName('a.bc')], [1, 0x61, 2, 0x62, 0x63, 0])
    assert.deepEqual([...encodeName('')], [0])
  })

  it('tells plain names from absurd ones', () => {
    assert.ok(isPlainName('web.km1s.internal'))
    assert.ok(isPlainName('_8080._tcp.web.km1s.internal'))
    assert.ok(!isPlainName('we b.km1s.internal'))
    assert.ok(!isPlainName('a..b'))
    assert.ok(!isPlainName('-a.b'))
    assert.ok(!isPlainName('\u0000.b'))
  })

  it('reads the rcode and smallest TTL of an answer as dns2 writes it, and never throws', () => {
    const p = new Packet()
    p.header.qr = 1
    p.questions.push(new Packet.Question('example.test', TYPE.A, 1))
    for (const [ttl, address] of [
      [60, '192.0.2.1'],
      [30, '192.0.2.2'],
    ] as const)
      p.answers.push(
        Packet.createResourceFromQuestion(p.questions[0] as never, { type: TYPE.A, ttl, address }),
      )
    assert.deepEqual(readAnswerTtls(p.toBuffer()), { rcode: 0, answers: 2, minTtl: 30 })
    assert.equal(readAnswerTtls(p.toBuffer().subarray(0, 40)), undefined)
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        readAnswerTtls(Buffer.from(bytes))
      }),
      { numRuns: 2000 },
    )
  })
})
