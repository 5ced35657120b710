import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { parseVariant } from '../../../scripts/bench/idle-ab.ts'
import { agentNodeFlags } from '../../../scripts/bench/proc.ts'

describe('bench helpers', () => {
  it('reads the agents V8 flags from bin/km1s', () => {
    const flags = agentNodeFlags()
    assert.ok(flags.includes('--max-old-space-size=64'), flags.join(' '))
    assert.ok(
      flags.every((f) => f.startsWith('--')),
      flags.join(' '),
    )
  })

  it('parses a variant: flags added and removed, environment', () => {
    const v = parseVariant('x:--no-maglev -max-semi-space-size=1 GLIBC_TUNABLES=glibc.malloc.arena_max=2', [
      '--max-old-space-size=64',
      '--max-semi-space-size=1',
    ])
    assert.deepEqual(v, {
      name: 'x',
      flags: ['--max-old-space-size=64', '--no-maglev'],
      env: { GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' },
    })
  })

  it('refuses a bad variant with one sentence', () => {
    assert.throws(() => parseVariant('default:--x', []), /always measured/)
    assert.throws(() => parseVariant('a b:--x', []), /needs a name/)
    assert.throws(() => parseVariant('a:-nope', ['--x']), /does not give/)
    assert.throws(() => parseVariant('a:lowercase=1', []), /neither --flag/)
  })
})
