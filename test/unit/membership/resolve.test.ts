import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { isKm1sError } from '../../../src/common/errors.ts'
import type { Member } from '../../../src/membership/membership.ts'
import { resolveNode } from '../../../src/membership/resolve.ts'

// resolveNode only compares strings, so ids with chosen tails stand in for peer ids.
const member = (id: string, name: string): Member => ({
  id,
  self: false,
  state: 'alive',
  lastHeard: 1_000,
  info: {
    name,
    arch: 'arm64',
    cpus: 4,
    memory: 1 << 30,
    version: '0.1.0',
    addresses: [],
    startedAt: 0,
    wgPublicKey: null,
  },
})

const piA = member('12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaXyZ1', 'pi-a')
const piB = member('12D3KooWBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbQrS2', 'pi-b')
const piC = member('12D3KooWCccccccccccccccccccccccccccccccccccccccc7QrS2', 'pi-c')
const members = [piA, piB, piC]

const errorWith =
  (code: string, ...mentions: string[]) =>
  (err: unknown) => {
    assert.ok(isKm1sError(err), `expected a Km1sError, got ${String(err)}`)
    assert.equal(err.code, code)
    assert.match(err.message, /^[^\n]+\.$/, 'one sentence')
    for (const m of mentions) assert.ok(err.message.includes(m), `the message names ${m}: ${err.message}`)
    return true
  }

describe('resolveNode', () => {
  it('finds a node by its name', () => {
    assert.equal(resolveNode(members, 'pi-b'), piB)
    assert.equal(resolveNode(members, 'pi-c'), piC)
  })

  it('finds a node by its full peer id', () => {
    assert.equal(resolveNode(members, piA.id), piA)
    assert.equal(resolveNode(members, piC.id), piC)
  })

  it('finds a node by the tail of its peer id, four characters or more', () => {
    assert.equal(resolveNode(members, 'XyZ1'), piA)
    assert.equal(resolveNode(members, 'aaaXyZ1'), piA)
    assert.equal(resolveNode(members, '7QrS2'), piC)
    assert.equal(resolveNode(members, piB.id.slice(-8)), piB)
  })

  it('does not match tails shorter than four characters, nor the middle of an id', () => {
    assert.throws(() => resolveNode(members, 'yZ1'), errorWith('ERR_NOT_FOUND', 'yZ1'))
    assert.throws(() => resolveNode(members, 'Aaaaaa'), errorWith('ERR_NOT_FOUND', 'Aaaaaa'))
  })

  it('prefers an exact name over an id tail', () => {
    const named = member('12D3KooWDddddddddddddddddddddddddddddddddddddddd0001', 'xyz1')
    assert.equal(resolveNode([piA, named], 'xyz1'), named)
  })

  it('throws ERR_NOT_FOUND with a sentence naming the reference for an unknown node', () => {
    assert.throws(() => resolveNode(members, 'pi-z'), errorWith('ERR_NOT_FOUND', 'pi-z', 'km1s nodes'))
    assert.throws(() => resolveNode([], 'pi-a'), errorWith('ERR_NOT_FOUND', 'pi-a'))
    assert.throws(() => resolveNode(members, ''), errorWith('ERR_NOT_FOUND'))
  })

  it('throws ERR_AMBIGUOUS when a tail matches several nodes, naming them', () => {
    assert.throws(
      () => resolveNode(members, 'QrS2'),
      errorWith('ERR_AMBIGUOUS', 'QrS2', '2 nodes', piB.id.slice(-8), piC.id.slice(-8)),
    )
  })

  it('throws ERR_AMBIGUOUS when two nodes share a name', () => {
    const twin = member('12D3KooWEeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee9999', 'pi-a')
    assert.throws(() => resolveNode([piA, twin, piB], 'pi-a'), errorWith('ERR_AMBIGUOUS', 'pi-a'))
    // the id still tells them apart
    assert.equal(resolveNode([piA, twin, piB], twin.id), twin)
  })
})
