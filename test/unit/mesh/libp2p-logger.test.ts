import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { libp2pLogger } from '../../../src/mesh/libp2p-logger.ts'

describe("libp2p's loggers", () => {
  it('do nothing, at every scope, unless DEBUG is set', () => {
    const log = libp2pLogger({}).forComponent('libp2p:yamux')
    const scoped = log.newScope('inbound:1')
    assert.equal(log.enabled, false)
    assert.equal(scoped.enabled, false)
    assert.equal(scoped.newScope('deeper'), scoped, 'one shared logger, nothing built per stream')
    log('a %s', 'message')
    scoped.error('an error')
    scoped.trace('a trace')
  })

  it("are debug's when DEBUG is set", () => {
    const log = libp2pLogger({ DEBUG: 'libp2p:nothing-matches-this' }).forComponent('libp2p:yamux')
    assert.equal(typeof log.error, 'function')
    assert.equal(typeof log.newScope('x'), 'function')
    assert.notEqual(log, libp2pLogger({}).forComponent('libp2p:yamux'))
  })
})
