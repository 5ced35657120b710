import { Km1sError } from '../common/errors.ts'

/** `k=v` sets a label, `k-` removes it (kubectl's convention). */
export function parseLabelChanges(changes: string[]): { set: Record<string, string>; remove: string[] } {
  const set: Record<string, string> = {}
  const remove: string[] = []
  for (const change of changes) {
    const eq = change.indexOf('=')
    if (eq > 0) set[change.slice(0, eq)] = change.slice(eq + 1)
    else if (change.endsWith('-') && change.length > 1) remove.push(change.slice(0, -1))
    else
      throw new Km1sError(
        'ERR_INVALID',
        `'${change}' is not a label change: write key=value to set a label or key- to remove it.`,
      )
  }
  return { set, remove }
}
