import { Km1sError } from '../common/errors.ts'

/** `k=v` sets a label, `k-` removes it (kubectl's convention). */
export function parseLabelChanges(changes: string[]): { set: Record<string, string>; remove: string[] } {
  const set: Record<string, string> = {}
  const remove: string[] = []
  for (const change of changes) {
    const eq = change.indexOf('=')
    // defineProperty, not assignment: `set['__proto__'] = v` would be swallowed by the prototype setter.
    if (eq > 0)
      Object.defineProperty(set, change.slice(0, eq), {
        value: change.slice(eq + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      })
    else if (change.endsWith('-') && change.length > 1) remove.push(change.slice(0, -1))
    else
      throw new Km1sError(
        'ERR_INVALID',
        `'${change}' is not a label change: write key=value to set a label or key- to remove it.`,
      )
  }
  return { set, remove }
}
