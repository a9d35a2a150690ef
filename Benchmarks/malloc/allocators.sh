# Sourced by run.sh and suite.sh: installs the Debian packages of the allocators compared with Divvy when they are
# missing (apt-get, with sudo unless root), and sets $libdir, where their libraries are.
#   install_allocators libjemalloc2 libmimalloc2.0 [libtcmalloc-minimal4]
install_allocators() {
    local missing=() package sudo=""
    for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" -ne 0 ] && sudo=sudo
        echo "installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get install -y -qq "${missing[@]}" >&2 \
            || { $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq "${missing[@]}" >&2; }
    fi
}
libdir=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
