import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { parseLabelChanges } from '../../../src/cli/labels.ts'
import { isKm1sError } from '../../../src/common/errors.ts'

const invalid = (input: string) => (err: unknown) => {
  assert.ok(isKm1sError(err), `expected a Km1sError, got ${String(err)}`)
  assert.equal(err.code, 'ERR_INVALID')
  assert.match(err.message, /^[^\n]+\.$/, 'one sentence')
  assert.ok(err.message.includes(`'${input}'`), `the message names the input: ${err.message}`)
  return true
}

describe('parseLabelChanges', () => {
  it('reads k=v as a label to set', () => {
    assert.deepEqual(parseLabelChanges(['zone=kitchen']), { set: { zone: 'kitchen' }, remove: [] })
    assert.deepEqual(parseLabelChanges(['example.com/tier=gold']), {
      set: { 'example.com/tier': 'gold' },
      remove: [],
    })
  })

  it('reads k= as a label set to the empty value', () => {
    assert.deepEqual(parseLabelChanges(['gpu=']), { set: { gpu: '' }, remove: [] })
  })

  it('splits at the first =, so a value may hold = and end in -', () => {
    assert.deepEqual(parseLabelChanges(['a=b=c', 'x=y-']), { set: { a: 'b=c', x: 'y-' }, remove: [] })
  })

  it('reads k- as a label to remove', () => {
    assert.deepEqual(parseLabelChanges(['zone-']), { set: {}, remove: ['zone'] })
  })

  it('reads several changes; a later k=v for the same key wins', () => {
    assert.deepEqual(parseLabelChanges(['a=1', 'b-', 'c=', 'a=2', 'd-']), {
      set: { a: '2', c: '' },
      remove: ['b', 'd'],
    })
    assert.deepEqual(parseLabelChanges([]), { set: {}, remove: [] })
  })

  it('refuses k, -, =v and the empty string with ERR_INVALID and a sentence naming the input', () => {
    for (const input of ['k', '-', '=v', '=', '']) {
      assert.throws(() => parseLabelChanges([input]), invalid(input))
      assert.throws(() => parseLabelChanges(['ok=1', input, 'gone-']), invalid(input))
    }
  })

  it('for any key and value without = in the key, k=v sets exactly that and k- removes exactly that', () => {
    const arbKey = fc.string({ minLength: 1, maxLength: 20 }).filter((k) => !k.includes('='))
    fc.assert(
      fc.property(arbKey, fc.string({ maxLength: 20 }), (k, v) => {
        const { set, remove } = parseLabelChanges([`${k}=${v}`])
        assert.deepEqual(Object.entries(set), [[k, v]])
        assert.deepEqual(remove, [])
        assert.deepEqual(parseLabelChanges([`${k}-`]), { set: {}, remove: [k] })
      }),
      { numRuns: 500 },
    )
  })

  it('does not silently drop a change to the key __proto__', () => {
    let result: ReturnType<typeof parseLabelChanges> | undefined
    try {
      result = parseLabelChanges(['__proto__=x'])
    } catch (err) {
      invalid('__proto__=x')(err)
      return
    }
    assert.deepEqual(Object.entries(result.set), [['__proto__', 'x']])
  })
})
