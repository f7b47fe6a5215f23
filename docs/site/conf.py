# Sphinx configuration of the bpfleet.core docs site, built by `bash scripts/ecosystem.sh docs`:
# antsibull-docs writes the plugin, module and role pages (from DOCUMENTATION, EXAMPLES,
# RETURN and meta/argument_specs.yml) as reStructuredText, the Markdown guides of docs/ are
# copied next to them and read with MyST, and sphinx-build runs with -W --keep-going
# (every warning fails the build) and nitpicky (every unresolved reference is a warning).
# Started from `antsibull-docs sphinx-init` 2.28.0.

project = "bpfleet.core"
copyright = "bpfleet maintainers"
title = "bpfleet.core documentation"
html_short_title = "bpfleet.core"

extensions = ["sphinx_antsibull_ext", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}

pygments_style = "ansible"
highlight_language = "YAML+Jinja"

html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
display_version = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False

# No intersphinx: the site is built offline in CI; links to other collections' docs are
# plain URLs made by antsibull-docs.
default_role = "any"
nitpicky = True

# MyST: GitHub-style Markdown of docs/*.md; headings get anchors so "file.md#section" links
# resolve.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# Labels of the Ansible docsite that antsibull-docs' pages reference (common return values,
# the configuration reference, modules of ansible.builtin). With network access intersphinx
# would resolve them from the docsite's inventory; the build is offline, so the few labels
# used are mapped here to their docsite URLs. Any other unresolved reference stays a warning,
# which fails the build.
ANSIBLE_DOCSITE = "https://docs.ansible.com/projects/ansible/latest/"
ANSIBLE_LABELS = {
    "action_plugins": ("plugins/action.html#action-plugins", "Action plugins"),
    "common_return_values": ("reference_appendices/common_return_values.html#common-return-values",
                             "Common return values"),
    "ansible_configuration_settings": ("reference_appendices/config.html#ansible-configuration-settings",
                                       "Ansible configuration settings"),
}
ANSIBLE_BUILTIN_PREFIX = "ansible_collections.ansible.builtin."


def _ansible_docsite_reference(app, env, node, contnode):
    from docutils import nodes

    target = node.get("reftarget", "")
    if target in ANSIBLE_LABELS:
        path, title = ANSIBLE_LABELS[target]
    elif target.startswith(ANSIBLE_BUILTIN_PREFIX) and target.count(".") == 3:
        # ansible_collections.ansible.builtin.copy_module -> collections/ansible/builtin/copy_module.html
        page = target[len(ANSIBLE_BUILTIN_PREFIX):]
        path, title = f"collections/ansible/builtin/{page}.html", None
    else:
        return None
    ref = nodes.reference("", "", internal=False, refuri=ANSIBLE_DOCSITE + path)
    ref.append(contnode if title is None or node.get("refexplicit") else nodes.inline(title, title))
    return ref


def setup(app):
    app.connect("missing-reference", _ansible_docsite_reference)
